//! [`AdmissionService`]: admits each request now or queues it, then calls the inner service.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use garrison_core::LayerBody;
use http::{Request, Response};
use tower::Service;

use super::{AdmissionLayer, ResponseFuture};

/// The service made by [`AdmissionLayer`].
#[derive(Clone)]
pub struct AdmissionService<S> {
    pub(super) inner: S,
    pub(super) layer: AdmissionLayer,
}

impl<S: fmt::Debug> fmt::Debug for AdmissionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionService")
            .field("inner", &self.inner)
            .field("admission", &self.layer.rules.admission)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AdmissionService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<LayerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.layer.admit(&req) {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), permit),
            Err(queued) => {
                // wait for a slot with the service that was polled ready; a clone stays here
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(queued, ready, req)
            }
        }
    }
}
