//! The `/metrics` endpoint.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Service;

use crate::{Format, MetricsRegistry};

/// A tower service that answers scrapes: `GET` (or `HEAD`) returns every metric of the
/// registry, as OpenMetrics when the `Accept` header asks for it (Prometheus does, and then
/// gets exemplars) and as the Prometheus text format otherwise. Other methods get
/// `405 Method Not Allowed`.
///
/// Serve it at any path: `Router::route_service("/metrics", registry.exporter())` in axum, or
/// route to it from a hyper `service_fn`.
#[derive(Clone, Debug)]
pub struct MetricsExporter {
    registry: MetricsRegistry,
}

impl MetricsExporter {
    /// An exporter of `registry`.
    pub fn new(registry: MetricsRegistry) -> Self {
        Self { registry }
    }

    /// The response to one scrape request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"only GET and HEAD are allowed on the metrics endpoint\n",
            )));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let format = Format::from_accept(req.headers().get(header::ACCEPT));
        let body = self.registry.render(format);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl<B> Service<Request<B>> for MetricsExporter {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}
