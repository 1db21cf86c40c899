//! An axum service with RED metrics per route.
//!
//! ```text
//! cargo run --example metrics_axum          # or: just run
//! curl localhost:3000/users/42
//! curl 'localhost:3000/work?ms=120'
//! curl localhost:3000/fail
//! curl localhost:3000/metrics
//! curl -H 'accept: application/openmetrics-text' localhost:3000/metrics   # with exemplars
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};

/// The example's routes, measured by `registry`, with `/metrics` beside them.
pub(crate) fn app(registry: &MetricsRegistry) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u64>| async move { format!("user {id}\n") }),
        )
        .route("/work", get(work))
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { format!("{} bytes\n", body.len()) }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "something broke\n") }),
        )
        .layer(MetricsLayer::new(registry))
        .route_service("/metrics", registry.exporter())
}

#[derive(serde::Deserialize)]
struct Work {
    ms: Option<u64>,
}

/// Takes `ms` milliseconds (default 10), to give the histogram something to show.
async fn work(Query(w): Query<Work>) -> String {
    let ms = w.ms.unwrap_or(10).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("worked {ms} ms\n")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "metrics_axum listening on http://{}",
        listener.local_addr()?
    );
    let registry = MetricsRegistry::new();
    axum::serve(listener, app(&registry)).await
}
