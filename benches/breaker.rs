//! Per-request cost of a circuit breaker, side by side in one run: bare axum, axum + a
//! closed garrison breaker, and the cost of a rejection while it is open.
//!
//! ```text
//! cargo bench -p garrison-workspace --bench breaker
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer};
use garrison_workspace::bench::{one, runtime, two_threads};

fn variants() -> Vec<(&'static str, Router)> {
    let bare = || Router::new().route("/users/{id}", get(|| async { "hello" }));
    let closed = BreakerRegistry::new();
    let open = BreakerRegistry::new();
    let config = BreakerConfig::profile("database").expect("profile");
    let variants = vec![
        ("bare_axum", bare()),
        (
            "breaker_closed",
            bare().layer(CircuitBreakerLayer::new(&closed, "db", config.clone())),
        ),
        (
            "breaker_open_rejects",
            bare().layer(CircuitBreakerLayer::new(&open, "db", config)),
        ),
    ];
    open.force_open("db").expect("breaker exists");
    variants
        .into_iter()
        .map(|(n, app)| (n, app.with_state(())))
        .collect()
}

fn benches(c: &mut Criterion) {
    let variants = variants();
    let mut g = c.benchmark_group("breaker/1_thread");
    let rt = runtime();
    for (name, app) in &variants {
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| one(app, "/users/42")));
    }
    g.finish();
    let mut g = c.benchmark_group("breaker/2_threads");
    for (name, app) in &variants {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| two_threads(app, "/users/42", iters))
        });
    }
    g.finish();
}

criterion_group! {
    name = breaker;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(breaker);
