//! Three rate-limit policies on three routes of one axum router.
//!
//! ```text
//! cargo run --example ratelimit_axum
//! curl -i localhost:3000/items                                    # general: 100 a minute
//! for i in $(seq 6); do curl -s -o /dev/null -w '%{http_code}\n' -X POST localhost:3000/login; done
//! curl -i -X POST -H 'x-api-key: k1' localhost:3000/upload        # upload: 10 per 5 min per key
//! curl localhost:3000/metrics | grep garrison_ratelimit
//! ```
//!
//! `/items` falls under `general` (100 a minute per client address), `/login` under `auth`
//! (5 per 15 minutes per address: the sixth login gets `429` with `Retry-After: 180`),
//! `/upload` under `upload` (10 per 5 minutes per API key). `/metrics` is exempt. Every
//! limited response carries `RateLimit-Policy`, `RateLimit` and `X-RateLimit-*`. Set
//! `GARRISON_REDIS_URL` to share the limits with other instances through Redis. It listens on
//! `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use garrison_metrics::MetricsRegistry;
use garrison_ratelimit::{KeySource, Policy, RateLimitBuilder, RateLimitLayer};

/// The rate limits of the example, before the store is chosen.
pub(crate) fn limits(metrics: &MetricsRegistry) -> RateLimitBuilder {
    RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .policy(Policy::new("auth", 5, Duration::from_secs(15 * 60)))
        .policy(Policy::new("upload", 10, Duration::from_secs(5 * 60)))
        .route("/login", "auth")
        .route("/upload", "upload")
        .policy_key("upload", KeySource::header("x-api-key"))
        .exempt_route("/metrics")
        .metrics(metrics)
}

/// The example's routes behind `limits`.
pub(crate) fn app(limits: RateLimitLayer, metrics: &MetricsRegistry) -> Router {
    Router::new()
        .route("/items", get(|| async { "items\n" }))
        .route("/login", post(|| async { "welcome\n" }))
        .route("/upload", post(|| async { "stored\n" }))
        .route_service("/metrics", metrics.exporter())
        .layer(limits)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "ratelimit_axum listening on http://{}",
        listener.local_addr()?
    );
    let metrics = MetricsRegistry::new();
    let mut builder = limits(&metrics);
    if let Ok(url) = std::env::var("GARRISON_REDIS_URL") {
        builder = builder.store(garrison_ratelimit::RedisStore::new(&url)?);
        println!("sharing limits through {url}");
    }
    let router = app(builder.build()?, &metrics);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
