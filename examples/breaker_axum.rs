//! A circuit breaker guarding a flaky handler, printing every transition.
//!
//! ```text
//! cargo run --example breaker_axum
//! for i in $(seq 6); do curl -s -o /dev/null -w '%{http_code}\n' localhost:3000/flaky; done
//! curl -X POST localhost:3000/upstream/up     # the dependency recovers
//! curl localhost:3000/metrics | grep garrison_breaker
//! ```
//!
//! `/flaky` answers 502 while the upstream is down (it starts down). After 4 calls with at
//! least half failed the breaker opens and answers 503 with `Retry-After` without calling the
//! handler; after 10 s it lets 2 probes through, which close it once the upstream is up.
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer, Window};
use garrison_metrics::MetricsRegistry;

/// The example's routes; the breaker is named `flaky` in `breakers`.
pub(crate) fn app(breakers: &BreakerRegistry, metrics: &MetricsRegistry) -> Router {
    let up = Arc::new(AtomicBool::new(false));
    let config = BreakerConfig::default()
        .window(Window::Count(20))
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .wait_in_open(Duration::from_secs(10))
        .exponential_wait(2.0, Duration::from_secs(60))
        .half_open_calls(2);
    let (u1, u2, u3) = (up.clone(), up.clone(), up);
    let guarded = Router::new()
        .route(
            "/flaky",
            get(move || {
                let up = u1.load(Ordering::SeqCst);
                async move {
                    if up {
                        (StatusCode::OK, "the upstream answered\n")
                    } else {
                        (StatusCode::BAD_GATEWAY, "the upstream is down\n")
                    }
                }
            }),
        )
        .layer(CircuitBreakerLayer::new(breakers, "flaky", config));
    metrics.register_collector(Arc::new(breakers.clone()));
    guarded
        .route(
            "/upstream/up",
            post(move || async move {
                u2.store(true, Ordering::SeqCst);
                "up\n"
            }),
        )
        .route(
            "/upstream/down",
            post(move || async move {
                u3.store(false, Ordering::SeqCst);
                "down\n"
            }),
        )
        .route_service("/metrics", metrics.exporter())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "breaker_axum listening on http://{}",
        listener.local_addr()?
    );
    let breakers = BreakerRegistry::new();
    breakers.on_transition(|t| {
        println!(
            "breaker {}: {} -> {} ({} calls, {} failed, {} slow)",
            t.breaker, t.from, t.to, t.window.calls, t.window.failures, t.window.slow
        )
    });
    axum::serve(listener, app(&breakers, &MetricsRegistry::new())).await
}
