//! The smallest hyper 1 reverse proxy: the floor that `scripts/load-gateway.sh` measures
//! garrison-gateway against, beside nginx. One current-thread runtime, one task per
//! connection, hyper's HTTP/1 server and hyper-util's pooled client with `HttpConnector`;
//! no routing, no header rewriting, no timeouts, nothing else. Not for production.
//!
//! ```text
//! GARRISON_LISTEN=127.0.0.1:3000 HYPER_FLOOR_UPSTREAM=127.0.0.1:8080 cargo run --release --example hyper_floor
//! ```

use std::convert::Infallible;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, hyper::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let upstream =
        std::env::var("HYPER_FLOOR_UPSTREAM").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("hyper_floor listening on http://{}", listener.local_addr()?);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    // SIGINT ends it normally, so that a profiler around it writes its output
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut interrupted => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| forward(client.clone(), upstream, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(pq)
        .build()
    else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    Ok(match client.request(req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *resp.status_mut() = code;
    resp
}
