//! The `/metrics` endpoint.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use garrison_core::{LayerBody, LayerFuture, Part, RequestInfo};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service};

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
        self.respond_bytes(req).map(Full::new)
    }

    fn respond_bytes<B>(&self, req: &Request<B>) -> Response<Bytes> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = Response::new(Bytes::from_static(
                b"only GET and HEAD are allowed on the metrics endpoint\n",
            ));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let format = Format::from_accept(req.headers().get(header::ACCEPT));
        let body = self.registry.render(format);
        let mut resp = Response::new(Bytes::from(body));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// A layer that answers scrapes at `path` in front of any service (before a rate
    /// limiter, so that Prometheus is never refused) and passes every other request on.
    ///
    /// ```
    /// use garrison_metrics::MetricsRegistry;
    /// use http::{Request, Response};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let registry = MetricsRegistry::new();
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(registry.exporter().layer("/metrics"))
    ///     .service_fn(|_req: Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new(bytes::Bytes::from("app")))
    ///     });
    /// let req = Request::get("/metrics").body(()).unwrap();
    /// let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    /// assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    /// # }
    /// ```
    pub fn layer(self, path: impl Into<String>) -> ScrapeLayer {
        ScrapeLayer {
            exporter: self,
            path: Arc::from(path.into()),
        }
    }
}

/// Answers scrapes at one path in front of a service; made by [`MetricsExporter::layer`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ScrapeLayer {
    exporter: MetricsExporter,
    path: Arc<str>,
}

impl ScrapeLayer {
    /// The exposition when `req` asks for the scrape path, for a stack that answers scrapes
    /// itself rather than as a layer (the `garrison` umbrella's one service); `None` for
    /// every other request.
    ///
    /// ```
    /// use garrison_metrics::MetricsRegistry;
    ///
    /// let scrape = MetricsRegistry::new().exporter().layer("/metrics");
    /// let get = |path| http::Request::get(path).body(()).unwrap();
    /// assert_eq!(scrape.answer(&get("/metrics")).unwrap().status(), 200);
    /// assert!(scrape.answer(&get("/orders")).is_none());
    /// ```
    #[inline]
    pub fn answer<B>(&self, req: &Request<B>) -> Option<Response<Bytes>> {
        answer(&self.exporter, &self.path, req)
    }
}

/// The scrape route as a part of a stack: [`ScrapeLayer::answer`].
impl Part for ScrapeLayer {
    type Entry = Option<Response<Bytes>>;

    #[inline]
    fn enter<B>(&self, req: &Request<B>, _info: &RequestInfo<'_>) -> Self::Entry {
        self.answer(req)
    }
}

#[inline]
fn answer<B>(exporter: &MetricsExporter, path: &str, req: &Request<B>) -> Option<Response<Bytes>> {
    (req.uri().path() == path).then(|| exporter.respond_bytes(req))
}

impl<S> Layer<S> for ScrapeLayer {
    type Service = ScrapeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScrapeService {
            inner,
            exporter: self.exporter.clone(),
            path: self.path.clone(),
        }
    }
}

/// The service made by [`ScrapeLayer`].
#[derive(Clone, Debug)]
pub struct ScrapeService<S> {
    inner: S,
    exporter: MetricsExporter,
    path: Arc<str>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ScrapeService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<LayerBody<ResB>>;
    type Error = S::Error;
    type Future = LayerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match answer(&self.exporter, &self.path, &req) {
            Some(resp) => LayerFuture::local(resp),
            None => LayerFuture::inner(self.inner.call(req)),
        }
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
