//! `HealthLayer`: answers the health routes in front of any tower or hyper service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use garrison_core::LayerBody;
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
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
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            if let Some(probe) = self.health.probe_for(req.uri().path()) {
                let resp = self.health.respond(probe, req.headers());
                return ResponseFuture {
                    kind: Kind::Local { resp: Some(resp) },
                };
            }
        }
        ResponseFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// The response future of [`HealthService`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F> {
        Inner { #[pin] fut: F },
        Local { resp: Option<Response<Bytes>> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LayerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Inner { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(LayerBody::inner))),
            Proj::Local { resp } => {
                let resp = resp.take().expect("polled after completion");
                Poll::Ready(Ok(resp.map(LayerBody::local)))
            }
        }
    }
}
