//! Priority admission in front of a slow axum service: two requests in the service at once,
//! the rest waiting by priority, the excess shed with `503` before it costs anything.
//!
//! ```text
//! cargo run --example admission_axum
//! # twenty slow reports at once: two run, a few wait, the rest get 503 with Retry-After
//! for i in $(seq 20); do curl -s -o /dev/null -w '%{http_code}\n' localhost:3000/reports/$i & done; wait
//! # a checkout is critical: it goes before every waiting report
//! curl -i -X POST localhost:3000/checkout
//! curl localhost:3000/metrics | grep garrison_admission
//! ```
//!
//! `/checkout` is `critical`, `/reports/{id}` is `batch` (it may wait 100 ms at most), and
//! `/metrics` is outside the layer. It listens on `GARRISON_LISTEN` (default
//! `127.0.0.1:3000`).

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use garrison_admission::{Admission, AdmissionLayer, Priority};
use garrison_metrics::MetricsRegistry;

/// The admission of the example: two in the service, four waiting at most.
pub(crate) fn admission(metrics: &MetricsRegistry) -> Admission {
    Admission::builder()
        .max_in_flight(2)
        .max_queue(4)
        .queue_timeout(Priority::Batch, Duration::from_millis(100))
        .metrics(metrics)
        .build()
        .expect("a valid admission")
}

/// The example's routes: a report takes `work`, a checkout is quick.
pub(crate) fn app(admission: Admission, metrics: &MetricsRegistry, work: Duration) -> Router {
    Router::new()
        .route("/checkout", post(|| async { "paid\n" }))
        .route(
            "/reports/{id}",
            get(move || async move {
                tokio::time::sleep(work).await;
                "report\n"
            }),
        )
        .layer(
            AdmissionLayer::new(admission)
                .route("/checkout", Priority::Critical)
                .route("/reports/{id}", Priority::Batch),
        )
        .route_service("/metrics", metrics.exporter())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "admission_axum listening on http://{}",
        listener.local_addr()?
    );
    let metrics = MetricsRegistry::new();
    let app = app(admission(&metrics), &metrics, Duration::from_secs(1));
    axum::serve(listener, app).await
}
