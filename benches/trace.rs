//! Per-request cost of trace propagation, side by side in one run: bare axum; garrison's
//! `TraceLayer` at 0%, 10% and 100% sampling; axum-tracing-opentelemetry's `OtelAxumLayer`
//! (with tracing-opentelemetry and an SDK tracer provider, sampling on and off); tower-http's
//! `TraceLayer` with INFO spans. Every variant runs under a `tracing` subscriber at INFO, as
//! a service that logs would; spans are exported nowhere (a sink that drops them), so the
//! figures are the in-process cost.
//!
//! ```text
//! cargo bench -p garrison-workspace --bench trace
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_trace::{BoxFuture, Sampler, SpanRecord, SpanSink, TraceLayer, Tracer};
use garrison_workspace::bench::{one, runtime};
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

fn garrison(ratio: f64) -> Router {
    let tracer = Tracer::builder()
        .sampler(Sampler::Ratio(ratio))
        .sink(Discard)
        .queue(1 << 16)
        .build();
    bare().layer(TraceLayer::new(&tracer))
}

/// `TraceLayer` with the OpenTelemetry context off (a service with no OpenTelemetry code in its
/// handlers).
fn garrison_no_context() -> Router {
    let tracer = Tracer::builder()
        .sampler(Sampler::Ratio(0.0))
        .sink(Discard)
        .build();
    bare().layer(TraceLayer::new(&tracer).otel_context(false))
}

/// `TraceLayer` recording into the user's SDK pipeline (the provider the peers use).
fn garrison_pipeline(sampled: bool) -> Router {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(if sampled {
            opentelemetry_sdk::trace::Sampler::AlwaysOn
        } else {
            opentelemetry_sdk::trace::Sampler::AlwaysOff
        })
        .build();
    let tracer = Tracer::builder()
        .pipeline(garrison_trace::Pipeline::new(&provider))
        .build();
    bare().layer(TraceLayer::new(&tracer))
}

fn info() -> tracing::Dispatch {
    tracing::Dispatch::new(tracing_subscriber::registry().with(LevelFilter::INFO))
}

fn otel(sampled: bool) -> tracing::Dispatch {
    peers::otel_dispatch(if sampled {
        opentelemetry_sdk::trace::Sampler::AlwaysOn
    } else {
        opentelemetry_sdk::trace::Sampler::AlwaysOff
    })
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let variants: Vec<(&str, Router, tracing::Dispatch)> = rt.block_on(async {
        vec![
            ("bare_axum", bare(), info()),
            ("garrison_trace_0pct", garrison(0.0), info()),
            ("garrison_trace_10pct", garrison(0.1), info()),
            ("garrison_trace_100pct", garrison(1.0), info()),
            (
                "garrison_trace_0pct_no_otel_context",
                garrison_no_context(),
                info(),
            ),
            (
                "garrison_pipeline_sampled",
                garrison_pipeline(true),
                otel(true),
            ),
            (
                "garrison_pipeline_unsampled",
                garrison_pipeline(false),
                otel(false),
            ),
            (
                "otel_axum_layer_sampled",
                bare().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default()),
                otel(true),
            ),
            (
                "otel_axum_layer_unsampled",
                bare().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default()),
                otel(false),
            ),
            (
                "tower_http_trace",
                bare().layer(
                    tower_http::trace::TraceLayer::new_for_http()
                        .make_span_with(
                            tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
                        )
                        .on_response(
                            tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                        ),
                ),
                info(),
            ),
        ]
    });
    let mut g = c.benchmark_group("trace/1_thread");
    for (name, app, dispatch) in &variants {
        let _guard = tracing::dispatcher::set_default(dispatch);
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| one(app, "/users/42")));
    }
    g.finish();
}

criterion_group! {
    name = trace;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(trace);
