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

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

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

#[inline]
async fn one(app: &Router) {
    let req = Request::get("/users/42").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap();
    std::hint::black_box(body);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn one_thread(c: &mut Criterion, variants: &[(&'static str, Router)]) {
    let mut g = c.benchmark_group("metrics/1_thread");
    let rt = runtime();
    for (name, app) in variants {
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| one(app)));
    }
    g.finish();
}

fn two_threads(c: &mut Criterion, variants: &[(&'static str, Router)]) {
    let mut g = c.benchmark_group("metrics/2_threads");
    for (name, app) in variants {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let app = app.clone();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            let rt = runtime();
                            rt.block_on(async {
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..iters {
                                    one(&app).await;
                                }
                                start.elapsed()
                            })
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .max()
                    .unwrap_or(Duration::ZERO)
            })
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
    two_threads(c, &variants);
}

criterion_group! {
    name = metrics;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(metrics);
