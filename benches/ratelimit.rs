//! Per-request cost of rate limiting, side by side in one run: bare axum, axum +
//! garrison's `RateLimitLayer` (memory store; one client key, and 100k distinct keys), and
//! axum + `tower_governor` with its headers on (the same two key counts); then the Redis
//! store against the real local Redis, asking for every request and with leases.
//!
//! ```text
//! cargo bench -p garrison-workspace --bench ratelimit
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use garrison_ratelimit::{Policy, RateLimitLayer, RedisStore};
use garrison_workspace::bench::{one_from, peer, runtime, two_threads_keys};

#[allow(dead_code)]
#[path = "common/peers.rs"]
mod peers;

fn bare() -> Router {
    Router::new().route("/users/{id}", get(|| async { "hello" }))
}

/// A policy no bench run can exhaust: one request per microsecond, a burst of 9999.
fn policy() -> Policy {
    Policy::per_second("bench", 1_000_000).burst(peers::BENCH_BURST)
}

fn garrison() -> Router {
    bare().layer(
        RateLimitLayer::builder()
            .policy(policy())
            .build()
            .expect("layer"),
    )
}

fn governor() -> Router {
    peers::with_governor(bare())
}

fn redis(lease: f64) -> Router {
    let url = std::env::var("GARRISON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = RedisStore::new(&url)
        .expect("Redis URL")
        .key_prefix(&format!("garrison-bench:{}", std::process::id()))
        .timeout(Duration::from_secs(1))
        .lease_fraction(lease);
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_second("bench", 1_000_000).burst(1_000_000))
        .store(store)
        .build()
        .expect("layer");
    bare().layer(layer)
}

fn variants() -> Vec<(&'static str, Router, u64)> {
    vec![
        ("bare_axum", bare(), 1),
        ("garrison_one_key", garrison(), 1),
        ("garrison_100k_keys", garrison(), 100_000),
        ("tower_governor_one_key", governor(), 1),
        ("tower_governor_100k_keys", governor(), 100_000),
    ]
    .into_iter()
    .map(|(n, app, keys)| (n, app.with_state(()), keys))
    .collect()
}

fn memory(c: &mut Criterion) {
    let variants = variants();
    let rt = runtime();
    let mut g = c.benchmark_group("ratelimit/1_thread");
    for (name, app, keys) in &variants {
        let mut i = 0u64;
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                one_from(app, "/users/42", peer(i, *keys))
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("ratelimit/2_threads");
    for (name, app, keys) in &variants {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| two_threads_keys(app, "/users/42", iters, *keys))
        });
    }
    g.finish();
}

fn redis_store(c: &mut Criterion) {
    let rt = runtime();
    let variants = {
        let _enter = rt.enter();
        [
            ("bare_axum", bare().with_state(())),
            ("redis_every_request", redis(0.0).with_state(())),
            ("redis_leases_2pct", redis(0.02).with_state(())),
        ]
    };
    let mut g = c.benchmark_group("ratelimit_redis/1_thread");
    for (name, app) in &variants {
        g.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| one_from(app, "/users/42", peer(0, 1)))
        });
    }
    g.finish();
}

criterion_group! {
    name = ratelimit;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = memory, redis_store
}
criterion_main!(ratelimit);
