//! The `/metrics` endpoint.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use garrison_core::{IpNet, LayerBody, LayerFuture, Part, RequestInfo};
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
            access: None,
        }
    }
}

/// Answers scrapes at one path in front of a service; made by [`MetricsExporter::layer`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ScrapeLayer {
    exporter: MetricsExporter,
    path: Arc<str>,
    access: Option<Arc<ScrapeAccess>>,
}

/// Who may scrape: callers presenting a bearer token, callers from some networks, or both
/// (every condition set must hold). A scrape refused for its token is answered `401` with
/// `WWW-Authenticate: Bearer`, one from another network `403`; neither sees a metric.
///
/// The caller's address is the connection's peer ([`PeerAddr`](garrison_core::PeerAddr),
/// or axum's `ConnectInfo`); without one, a network rule refuses.
///
/// ```
/// use garrison_metrics::{MetricsRegistry, ScrapeAccess};
///
/// let scrape = MetricsRegistry::new()
///     .exporter()
///     .layer("/metrics")
///     .access(ScrapeAccess::new().token("s3cret").from_networks(["10.0.0.0/8".parse().unwrap()]));
/// let from = |ip: &str, token: Option<&str>| {
///     let mut req = http::Request::get("/metrics");
///     if let Some(t) = token {
///         req = req.header("authorization", format!("Bearer {t}"));
///     }
///     let mut req = req.body(()).unwrap();
///     let peer = garrison_core::PeerAddr(format!("{ip}:4000").parse().unwrap());
///     req.extensions_mut().insert(peer);
///     scrape.answer(&req).unwrap().status()
/// };
/// assert_eq!(from("10.0.0.9", Some("s3cret")), 200);
/// assert_eq!(from("10.0.0.9", None), 401);
/// assert_eq!(from("192.0.2.1", Some("s3cret")), 403);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ScrapeAccess {
    token: Option<Arc<[u8]>>,
    networks: Arc<[IpNet]>,
}

impl ScrapeAccess {
    /// Everybody may scrape (add conditions with [`token`](Self::token) and
    /// [`from_networks`](Self::from_networks)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Scrapes must present `Authorization: Bearer <token>` (compared in constant time).
    pub fn token(mut self, token: impl AsRef<[u8]>) -> Self {
        self.token = Some(token.as_ref().into());
        self
    }

    /// Scrapes must come from one of `networks`.
    pub fn from_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.networks = networks.into_iter().collect();
        self
    }

    /// The answer to a scrape these rules refuse; `None` when they let it through.
    fn refusal<B>(&self, req: &Request<B>) -> Option<Response<Bytes>> {
        if !self.networks.is_empty() && !garrison_core::peer_within(req, &self.networks) {
            return Some(refused(
                StatusCode::FORBIDDEN,
                "not from a network allowed to scrape",
            ));
        }
        if let Some(token) = &self.token {
            if !garrison_core::bearer_matches(req.headers(), token) {
                let mut resp = refused(StatusCode::UNAUTHORIZED, "scrapes need a bearer token");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Some(resp);
            }
        }
        None
    }
}

fn refused(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(format!("{{\"error\":\"{message}\"}}")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
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
        answer(&self.exporter, &self.path, self.access.as_deref(), req)
    }

    /// Who may scrape (default: everybody who reaches the path).
    pub fn access(mut self, access: ScrapeAccess) -> Self {
        self.access = Some(Arc::new(access));
        self
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
fn answer<B>(
    exporter: &MetricsExporter,
    path: &str,
    access: Option<&ScrapeAccess>,
    req: &Request<B>,
) -> Option<Response<Bytes>> {
    if req.uri().path() != path {
        return None;
    }
    if let Some(refused) = access.and_then(|a| a.refusal(req)) {
        return Some(refused);
    }
    Some(exporter.respond_bytes(req))
}

impl<S> Layer<S> for ScrapeLayer {
    type Service = ScrapeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScrapeService {
            inner,
            exporter: self.exporter.clone(),
            path: self.path.clone(),
            access: self.access.clone(),
        }
    }
}

/// The service made by [`ScrapeLayer`].
#[derive(Clone, Debug)]
pub struct ScrapeService<S> {
    inner: S,
    exporter: MetricsExporter,
    path: Arc<str>,
    access: Option<Arc<ScrapeAccess>>,
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
        match answer(&self.exporter, &self.path, self.access.as_deref(), &req) {
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
