//! A small shop API behind the whole garrison, in one `.layer(...)`: three route groups
//! (catalogue, accounts, uploads) under the seeds' policies `general`, `auth` and `upload`,
//! per-route breakers, W3C trace propagation, `/metrics` and `/health/*`.
//!
//! ```text
//! cargo run --example axum_app
//! curl -i localhost:3000/api/products/7                  # RateLimit headers, x-request-id
//! for i in 1 2 3 4 5 6; do curl -si -XPOST localhost:3000/auth/login | head -1; done  # 429
//! curl localhost:3000/metrics
//! curl localhost:3000/health/ready
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`) and reads its configuration
//! from the file in `GARRISON_CONFIG` when that is set, else from [`CONFIG`] below.

use std::net::SocketAddr;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use garrison::{Garrison, GarrisonConfig};

/// The example's configuration: what is not written here has its default
/// (see `crates/garrison/garrison-config.example.toml`).
pub(crate) const CONFIG: &str = r#"
[service]
name = "shop"
version = "1.0.0"

[trace]
ratio = 0.1
trace_response = true

[ratelimit]
default_policy = "general"      # 100 per minute per client address

[ratelimit.routes]
"/auth/login" = "auth"          # 5 per 15 minutes
"/auth/register" = "auth"
"/uploads/{name}" = "upload"    # 10 per 5 minutes

[breaker]
profile = "critical"

[breaker.routes]
"/api/orders/{id}" = "database"
"#;

/// The shop's routes behind `garrison`'s layer.
pub(crate) fn app(garrison: &Garrison) -> Router {
    let catalogue = Router::new()
        .route("/api/products", get(|| async { "[1, 2, 3]\n" }))
        .route(
            "/api/products/{id}",
            get(|Path(id): Path<u64>| async move { format!("product {id}\n") }),
        )
        .route(
            "/api/orders/{id}",
            get(|Path(id): Path<u64>| async move {
                // order 13 hits a bug: the stack answers 500, counts and traces the panic
                assert_ne!(id, 13, "order 13 is cursed");
                // order 0 is where the database is "down"
                if id == 0 {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "database unavailable\n".to_owned(),
                    )
                } else {
                    (StatusCode::OK, format!("order {id}\n"))
                }
            }),
        );
    let accounts = Router::new()
        .route("/auth/login", post(|| async { "welcome\n" }))
        .route("/auth/register", post(|| async { "registered\n" }));
    let uploads = Router::new().route(
        "/uploads/{name}",
        post(
            |Path(name): Path<String>, body: axum::body::Bytes| async move {
                format!("stored {name}: {} bytes\n", body.len())
            },
        ),
    );
    catalogue
        .merge(accounts)
        .merge(uploads)
        .layer(garrison.layer())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = match std::env::var("GARRISON_CONFIG") {
        Ok(path) => GarrisonConfig::from_file(path)?,
        Err(_) => GarrisonConfig::from_toml(CONFIG)?,
    };
    let garrison = Garrison::from_config(config)?;
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("axum_app listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app(&garrison).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        garrison.begin_shutdown();
    })
    .await?;
    Ok(())
}
