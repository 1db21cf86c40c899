//! The built-in demo upstream (`addresses = ["builtin:demo"]`): a small service on a free
//! loopback port, so that the gateway shows 200s, 429s, 503s, `/metrics` and `/health`
//! before you point it at your own services.
//!
//! | route | answer |
//! |---|---|
//! | `/` | a greeting and the routes below |
//! | `/items/{id}` | a JSON item |
//! | `/auth/login` | `{"token":"demo"}` (the default config limits it to 5 per 15 minutes) |
//! | `/upload` | the number of bytes received (the body is streamed, not buffered) |
//! | `/status/{code}` | that status (try `/status/500` many times to open a breaker) |
//! | `/slow?ms=N` | answers after N milliseconds |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Starts the demo service on a free loopback port and returns its address. It runs until
/// the runtime ends.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    Ok(addr)
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let json = "application/json";
    let resp = match path.as_str() {
        "/" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "garrison gateway demo upstream: /items/{id} /auth/login /upload /status/{code} /slow?ms=N\n",
        ),
        "/auth/login" => text(StatusCode::OK, json, r#"{"token":"demo"}"#),
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, Bytes::len),
                    Err(_) => return Ok(text(StatusCode::BAD_REQUEST, json, r#"{"error":"body broke off"}"#)),
                }
            }
            text(StatusCode::OK, json, format!(r#"{{"received":{n}}}"#))
        }
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, json, format!(r#"{{"slept_ms":{ms}}}"#))
        }
        p => {
            if let Some(id) = p.strip_prefix("/items/").filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric())) {
                text(StatusCode::OK, json, format!(r#"{{"id":"{id}","name":"item {id}"}}"#))
            } else if let Some(code) = p
                .strip_prefix("/status/")
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                text(code, json, format!(r#"{{"status":{}}}"#, code.as_u16()))
            } else {
                text(StatusCode::NOT_FOUND, json, r#"{"error":"not found"}"#)
            }
        }
    };
    Ok(resp)
}
