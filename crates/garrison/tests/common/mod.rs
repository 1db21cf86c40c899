//! What the umbrella's integration tests share.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// A `GET path` from a client at 192.0.2.7, to add headers to.
pub(crate) fn get(path: &str) -> http::request::Builder {
    Request::get(path).extension(garrison::garrison_core::PeerAddr(
        "192.0.2.7:4000".parse().unwrap(),
    ))
}

/// The status `svc` answers `req` with, its body read to the end (so that it is measured).
pub(crate) async fn status_of<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}
