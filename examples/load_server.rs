//! The server of `just load`: one route, `GET /users/{id}`, served by bare axum or behind a
//! metrics layer or a whole stack (garrison's, or the peer crates'), so that a load generator can compare them end to end over real sockets.
//!
//! ```text
//! cargo run --release --example load_server -- garrison_metrics   # or bare_axum, axum_prometheus,
//!                                                                  # garrison_stack, peer_stack
//! cargo run --release --example load_server -- garrison_stack-ratelimit   # a part turned off
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};

#[allow(dead_code)]
#[path = "../benches/common/peers.rs"]
mod peers;

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
        // The whole garrison (trace at 10%, metrics, health routes, rate limit, breakers),
        // with a policy the load cannot exhaust.
        // `garrison_stack-trace-ratelimit`: without those parts, to see what each one costs.
        v if v == "garrison_stack" || v.starts_with("garrison_stack-") => {
            let garrison = garrison::Garrison::from_config(peers::stack_config(v))
                .map_err(std::io::Error::other)?;
            bare.layer(garrison.layer())
        }
        // The peer crates it replaces: tower_governor, axum-prometheus and
        // axum-tracing-opentelemetry (SDK tracer at 10%, spans exported nowhere).
        "peer_stack" => {
            tracing::dispatcher::set_global_default(peers::otel_10pct())
                .map_err(std::io::Error::other)?;
            peers::peer_stack(bare)
        }
        other => {
            return Err(std::io::Error::other(format!(
                "unknown variant `{other}`: use bare_axum, garrison_metrics, axum_prometheus, garrison_stack or peer_stack"
            )))
        }
    };
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "load_server ({variant}) listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await
}
