use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::Service;

use super::{BreakerBody, ResponseFuture, Shared};
use crate::Rejected;

/// The service made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreakerService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CircuitBreakerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.name)
            .finish()
    }
}

/// The default answer while the breaker rejects.
pub(crate) fn rejection(name: &str, r: &Rejected) -> Response<Bytes> {
    let secs = r.retry_after.as_secs() + u64::from(r.retry_after.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut name_json = String::with_capacity(name.len() + 2);
    garrison_core::push_json_string(&mut name_json, name);
    let body = format!(
        "{{\"error\":\"circuit_open\",\"breaker\":{name_json},\"state\":\"{}\",\"retry_after_seconds\":{secs}}}",
        r.state
    );
    garrison_core::refusal(StatusCode::SERVICE_UNAVAILABLE, secs, Bytes::from(body))
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CircuitBreakerService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<BreakerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.shared.admit(&req, None, None) {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), permit),
            Err(resp) => ResponseFuture::rejected(resp),
        }
    }
}
