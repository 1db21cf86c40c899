//! A plain hyper `service_fn` (no axum) behind the whole garrison: the same layer, with the
//! routes named by `[service] routes` instead of axum's `MatchedPath`.
//!
//! ```text
//! cargo run --example hyper_service
//! curl -i localhost:3000/items/7
//! curl localhost:3000/metrics
//! curl localhost:3000/health
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::convert::Infallible;

use bytes::Bytes;
use garrison::garrison_core::PeerAddr;
use garrison::{Garrison, GarrisonConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::{ServiceBuilder, ServiceExt};

/// The example's configuration.
pub(crate) const CONFIG: &str = r#"
[service]
name = "items"
routes = ["/", "/items/{id}"]

[ratelimit.policies.items]
limit = 50
period = "1s"

[ratelimit.routes]
"/items/{id}" = "items"
"#;

/// The service as you would write it for hyper alone.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let (status, body) = if let Some(id) = path.strip_prefix("/items/") {
        (StatusCode::OK, format!("item {id}\n"))
    } else if path == "/" {
        (StatusCode::OK, "hello\n".to_owned())
    } else {
        (StatusCode::NOT_FOUND, "not found\n".to_owned())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let garrison = Garrison::from_config(GarrisonConfig::from_toml(CONFIG)?)?;
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "hyper_service listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, garrison).await?;
    Ok(())
}

/// Serves the example on `listener` behind `garrison`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    garrison: Garrison,
) -> std::io::Result<()> {
    let app = ServiceBuilder::new()
        .layer(garrison.layer())
        .service_fn(handle);
    loop {
        let (stream, peer) = listener.accept().await?;
        // the rate limiter keys clients by this address (axum's ConnectInfo does the same)
        let svc = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
}
