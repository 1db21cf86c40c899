//! Per-request cost of RED metrics, side by side in one run:
//! bare axum, axum + garrison's `MetricsLayer`, axum + axum-prometheus (the peer).
//!
//! ```text
//! just bench            # = cargo bench -p garrison-workspace --bench metrics
//! ```
//!
//! `noop_body_layer` is a pass-through layer that wraps the response body and does nothing
//! else: what axum charges any middleware that must see the end of the body (it boxes the
//! layered service, its future and the new body type). It is the floor for a body-timing
//! layer; garrison's own work is its distance from that floor.
//!
//! Each iteration sends one `GET /users/42` through the router and reads the response body to
//! its end (both layers stop their clock there). `1_thread` runs on one thread; `2_threads`
//! has two threads hammer the same route of one shared router, each on its own runtime, and
//! reports the time per request pair (lower is better; equal to `1_thread` means perfect
//! scaling).

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use garrison_workspace::bench::{one, runtime, two_threads};

fn bare() -> Router {
    Router::new().route("/users/{id}", get(|| async { "hello" }))
}

fn variants(background: &tokio::runtime::Runtime) -> Vec<(&'static str, Router)> {
    let registry = MetricsRegistry::new();
    // axum-prometheus installs a global recorder (build it once per process) and spawns its
    // upkeep task, which runs on `background`.
    let _enter = background.enter();
    let (peer_layer, peer_handle) = axum_prometheus::PrometheusMetricLayer::pair();
    std::mem::forget(peer_handle);
    vec![
        ("bare_axum", bare()),
        (
            "noop_body_layer",
            bare().layer(garrison_workspace::bench::NoopLayer),
        ),
        (
            "garrison_metrics",
            bare().layer(MetricsLayer::new(&registry)),
        ),
        ("axum_prometheus", bare().layer(peer_layer)),
    ]
}

fn one_thread(c: &mut Criterion, variants: &[(&'static str, Router)]) {
    let mut g = c.benchmark_group("metrics/1_thread");
    let rt = runtime();
    for (name, app) in variants {
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| one(app, "/users/42")));
    }
    g.finish();
}

fn on_two_threads(c: &mut Criterion, variants: &[(&'static str, Router)]) {
    let mut g = c.benchmark_group("metrics/2_threads");
    for (name, app) in variants {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| two_threads(app, "/users/42", iters))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let variants = variants(&background);
    one_thread(c, &variants);
    on_two_threads(c, &variants);
}

criterion_group! {
    name = metrics;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(metrics);
