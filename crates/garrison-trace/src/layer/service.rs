//! [`TraceService`]: opens each request's trace and calls the inner service inside it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::body::TraceBody;
use super::future::ResponseFuture;
use super::start::start;
use super::Shared;

/// The service made by [`TraceLayer`](super::TraceLayer).
#[derive(Clone)]
pub struct TraceService<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for TraceService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceService").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for TraceService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TraceBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let traced = start(&self.shared, &mut req);
        let fut = {
            let _entered = traced.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: fut,
            state: Some(traced),
        }
    }
}
