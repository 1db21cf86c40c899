//! The server of `just load`: one route, `GET /users/{id}`, served by bare axum or behind a
//! metrics layer, so that a load generator can compare them end to end over real sockets.
//!
//! ```text
//! cargo run --release --example load_server -- garrison_metrics   # or bare_axum, axum_prometheus
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let variant = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "garrison_metrics".to_owned());
    let bare = Router::new().route(
        "/users/{id}",
        get(|Path(id): Path<u64>| async move { format!("user {id}\n") }),
    );
    let registry = MetricsRegistry::new();
    let app = match variant.as_str() {
        "bare_axum" => bare,
        "garrison_metrics" => bare
            .layer(MetricsLayer::new(&registry))
            .route_service("/metrics", registry.exporter()),
        "axum_prometheus" => {
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            bare.layer(layer)
                .route("/metrics", get(move || async move { handle.render() }))
        }
        other => {
            return Err(std::io::Error::other(format!(
                "unknown variant `{other}`: use bare_axum, garrison_metrics or axum_prometheus"
            )))
        }
    };
    let listener = garrison_workspace::listen(&format!("load_server ({variant})")).await?;
    axum::serve(listener, app).await
}
