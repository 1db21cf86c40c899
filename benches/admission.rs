//! Per-request cost of admission when nothing waits, side by side in one run: bare axum,
//! axum + garrison's `AdmissionLayer` (with and without route priorities), axum + tower's
//! plain `ConcurrencyLimitLayer`; and the controller alone (`try_acquire` + release).
//!
//! ```text
//! cargo bench -p garrison-workspace --bench admission
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_admission::{Admission, AdmissionLayer, Priority};
use garrison_workspace::bench::{one, runtime, two_threads};

fn variants() -> Vec<(&'static str, Router)> {
    let bare = || Router::new().route("/users/{id}", get(|| async { "hello" }));
    let admission = || Admission::builder().max_in_flight(1024).build().unwrap();
    vec![
        ("bare_axum", bare()),
        ("admission", bare().layer(AdmissionLayer::new(admission()))),
        (
            "admission_route_priority",
            bare().layer(AdmissionLayer::new(admission()).route("/users/{id}", Priority::High)),
        ),
        (
            "tower_concurrency_limit",
            bare().layer(tower::limit::ConcurrencyLimitLayer::new(1024)),
        ),
    ]
}

fn benches(c: &mut Criterion) {
    let variants = variants();
    let mut g = c.benchmark_group("admission/1_thread");
    let rt = runtime();
    for (name, app) in &variants {
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| one(app, "/users/42")));
    }
    g.finish();
    let mut g = c.benchmark_group("admission/2_threads");
    for (name, app) in &variants {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| two_threads(app, "/users/42", iters))
        });
    }
    g.finish();
    let adm = Admission::builder().max_in_flight(1024).build().unwrap();
    c.bench_function("admission/try_acquire_release", |b| {
        b.iter(|| drop(std::hint::black_box(adm.try_acquire(Priority::Normal))))
    });
}

criterion_group! {
    name = admission;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(admission);
