//! Per-request cost of the whole stack, side by side in one run:
//!
//! - `bare_axum`;
//! - `garrison_stack`: `Garrison::layer()` — trace at 10% sampling (spans to a sink that
//!   drops them), metrics, health routes and `/metrics` mounted, rate limit on (a policy no
//!   run can exhaust), breakers closed;
//! - `peer_stack`: the crates it replaces, stacked in the same order — axum-tracing-
//!   opentelemetry's `OtelAxumLayer` (tracing-opentelemetry, SDK tracer at 10% sampling),
//!   axum-prometheus, tower_governor with its headers on (no breaker or health: they have no
//!   peer in that set).
//!
//! Every variant runs under a `tracing` subscriber at INFO, as a service that logs would.
//!
//! ```text
//! cargo bench -p garrison-workspace --bench stack
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison::garrison_trace::{BoxFuture, Sampler, SpanRecord, SpanSink, Tracer};
use garrison::{Garrison, GarrisonConfig};
use garrison_workspace::bench::{one_from, peer, runtime};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

#[allow(dead_code)]
#[path = "common/peers.rs"]
mod peers;

struct Discard;

impl SpanSink for Discard {
    fn export(&self, batch: Vec<SpanRecord>) -> BoxFuture<'_, Result<(), String>> {
        drop(batch);
        Box::pin(async { Ok(()) })
    }
}

fn bare() -> Router {
    Router::new().route("/users/{id}", get(|| async { "hello" }))
}

fn garrison() -> Router {
    let tracer = Tracer::builder()
        .sampler(Sampler::Ratio(0.1))
        .sink(Discard)
        .queue(1 << 16)
        .build();
    let garrison = Garrison::builder()
        .config(GarrisonConfig::from_toml(peers::STACK_CONFIG).expect("config"))
        .tracer(tracer)
        .build()
        .expect("garrison");
    bare().layer(garrison.layer())
}

fn info() -> tracing::Dispatch {
    tracing::Dispatch::new(tracing_subscriber::registry().with(LevelFilter::INFO))
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let variants: Vec<(&str, Router, tracing::Dispatch)> = rt.block_on(async {
        vec![
            ("bare_axum", bare(), info()),
            ("garrison_stack", garrison(), info()),
            ("peer_stack", peers::peer_stack(bare()), peers::otel_10pct()),
        ]
    });
    let mut g = c.benchmark_group("stack/1_thread");
    for (name, app, dispatch) in &variants {
        let _guard = tracing::dispatcher::set_default(dispatch);
        let mut i = 0u64;
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                one_from(app, "/users/42", peer(i, 1))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = stack;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(stack);
