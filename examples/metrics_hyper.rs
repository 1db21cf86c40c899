//! A plain hyper service (no axum router) with RED metrics, labelled by a route table.
//!
//! ```text
//! cargo run --example metrics_hyper
//! curl localhost:3000/items/7
//! curl localhost:3000/metrics
//! ```
//!
//! It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::convert::Infallible;

use bytes::Bytes;
use garrison_metrics::{MetricsLayer, MetricsRegistry, RouteTable};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let resp = if let Some(id) = path.strip_prefix("/items/") {
        Response::new(Full::new(Bytes::from(format!("item {id}\n"))))
    } else if path == "/" {
        Response::new(Full::new(Bytes::from_static(b"hello\n")))
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "metrics_hyper listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, MetricsRegistry::new()).await
}

/// Serves the example's hyper service on `listener`, measured by `registry`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    registry: MetricsRegistry,
) -> std::io::Result<()> {
    let routes = RouteTable::from_patterns(["/", "/items/{id}"]).expect("valid patterns");
    let exporter = registry.exporter();
    let app = ServiceBuilder::new()
        .layer(MetricsLayer::new(&registry).route_table(routes))
        .service_fn(move |req: Request<Incoming>| {
            let exporter = exporter.clone();
            async move {
                if req.uri().path() == "/metrics" {
                    return Ok(exporter.respond(&req));
                }
                handle(req).await
            }
        });

    loop {
        let (stream, _) = listener.accept().await?;
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
