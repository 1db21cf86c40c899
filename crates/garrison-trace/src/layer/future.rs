//! [`ResponseFuture`]: the inner service's future, run inside the request's trace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::body::TraceBody;
use super::traced::TracedRequest;

pin_project! {
    /// The response future of [`TraceService`].
    pub struct ResponseFuture<F> {
        #[pin]
        pub(super) inner: F,
        pub(super) state: Option<TracedRequest>,
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
    type Output = Result<Response<TraceBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let traced = this.state.as_ref().expect("polled after completion");
        let result = {
            let _entered = traced.enter();
            match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            }
        };
        let traced = this.state.take().expect("present");
        Poll::Ready(match result {
            Ok(resp) => Ok(traced.respond(resp)),
            Err(e) => {
                traced.failed();
                Err(e)
            }
        })
    }
}
