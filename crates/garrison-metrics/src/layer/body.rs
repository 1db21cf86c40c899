use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use garrison_core::ErrorType;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::RequestGuard;

pin_project! {
    /// The response body of [`MetricsService`](super::MetricsService): the inner body,
    /// counting the bytes it sends and ending the request's duration when it ends.
    ///
    /// The request is recorded when the body yields its last frame (or reports
    /// end-of-stream), when it fails (`error_type="body_error"`), or when it is dropped
    /// unfinished (`error_type="cancelled"`).
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B: Body> MetricsBody<B> {
    pub(crate) fn new(inner: B, mut guard: RequestGuard) -> Self {
        // A body that is empty from the start, or that HTTP forbids sending (a response to
        // HEAD, 1xx, 204, 304), is never polled: hyper drops it unread. The request is
        // complete once the headers are out.
        if inner.is_end_stream() || !guard.response_has_body() {
            guard.complete();
        }
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// `inner`, measured by nothing: the body of a stack whose metrics are turned off.
    pub fn unmeasured(inner: B) -> Self {
        Self { inner, guard: None }
    }
}

impl<B> MetricsBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsBody")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(guard) = this.guard.as_mut().filter(|g| !g.is_done()) else {
            return Poll::Ready(frame);
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    guard.add_response_bytes(data.remaining());
                }
                // hyper stops polling once a body says it has ended.
                if this.inner.is_end_stream() {
                    guard.complete();
                }
            }
            Some(Err(_)) => guard.finish(ErrorType::Body),
            None => guard.complete(),
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
