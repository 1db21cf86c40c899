//! `HealthLayer`: answers the health routes in front of any tower or hyper service.

use std::task::{Context, Poll};

use garrison_core::{LayerBody, Part, RequestInfo};
use http::{Method, Request, Response};
use tower::{Layer, Service};

use crate::HealthRegistry;

/// Answers `GET` and `HEAD` on the health paths from the registry's cached results, before
/// any limiter or breaker; every other request goes to the inner service untouched.
///
/// ```
/// use garrison_health::{HealthLayer, HealthRegistry};
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let health = HealthRegistry::new();
/// let mut svc = ServiceBuilder::new()
///     .layer(HealthLayer::new(&health))
///     .service_fn(|_req: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(bytes::Bytes::from("app")))
///     });
/// let resp = svc.ready().await.unwrap().call(Request::get("/health/live").body(()).unwrap()).await.unwrap();
/// assert_eq!(resp.status(), StatusCode::OK);
/// assert_eq!(resp.headers()["content-type"], "application/health+json");
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct HealthLayer {
    health: HealthRegistry,
}

impl HealthLayer {
    /// A layer answering from `health`.
    pub fn new(health: &HealthRegistry) -> Self {
        Self {
            health: health.clone(),
        }
    }

    /// The health report when `req` is a `GET` or `HEAD` of a health path, for a stack that
    /// answers the health routes itself rather than as a layer (the `garrison` umbrella's one
    /// service); `None` for every other request.
    ///
    /// ```
    /// use garrison_health::{HealthLayer, HealthRegistry};
    ///
    /// let layer = HealthLayer::new(&HealthRegistry::new());
    /// let get = |path| http::Request::get(path).body(()).unwrap();
    /// assert_eq!(layer.answer(&get("/health/live")).unwrap().status(), 200);
    /// assert!(layer.answer(&get("/orders")).is_none());
    /// ```
    #[inline]
    pub fn answer<B>(&self, req: &Request<B>) -> Option<Response<bytes::Bytes>> {
        answer(&self.health, req)
    }
}

/// The health routes as a part of a stack: [`HealthLayer::answer`].
impl Part for HealthLayer {
    type Entry = Option<Response<bytes::Bytes>>;

    #[inline]
    fn enter<B>(&self, req: &Request<B>, _info: &RequestInfo<'_>) -> Self::Entry {
        self.answer(req)
    }
}

#[inline]
fn answer<B>(health: &HealthRegistry, req: &Request<B>) -> Option<Response<bytes::Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let probe = health.probe_for(req.uri().path())?;
    Some(health.respond_to(probe, req))
}

impl<S> Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            health: self.health.clone(),
        }
    }
}

/// The service made by [`HealthLayer`].
#[derive(Clone, Debug)]
pub struct HealthService<S> {
    inner: S,
    health: HealthRegistry,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HealthService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<LayerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match answer(&self.health, &req) {
            Some(resp) => ResponseFuture::local(resp),
            None => ResponseFuture::inner(self.inner.call(req)),
        }
    }
}

/// The response future of [`HealthService`]: the inner service's, or a health report.
pub type ResponseFuture<F> = garrison_core::LayerFuture<F>;
