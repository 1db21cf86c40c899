//! [`TraceBody`]: the response body, finishing the trace when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::finish::Finisher;

pin_project! {
    /// The response body of [`TraceService`]: the inner body, ending the server span when it
    /// ends.
    pub struct TraceBody<B> {
        #[pin]
        pub(super) inner: B,
        pub(super) finisher: Option<Finisher>,
    }
}

impl<B> TraceBody<B> {
    /// `inner`, traced by nothing: the body of a stack whose tracing is turned off.
    pub fn untraced(inner: B) -> Self {
        Self {
            inner,
            finisher: None,
        }
    }
}

impl<B> std::fmt::Debug for TraceBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TraceBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(mut f) = this.finisher.take() {
                    f.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut f) = this.finisher.take() {
                    f.finish(Some("body_error"));
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
