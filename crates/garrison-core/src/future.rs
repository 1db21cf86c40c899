//! The response future of a layer that either calls the inner service or answers by itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::LayerBody;

pin_project! {
    /// The response future of a layer that answers some requests by itself (a health probe,
    /// a scrape) and passes the others to the inner service: the inner future, or a response
    /// ready at once.
    pub struct LayerFuture<F> {
        #[pin]
        kind: FutureKind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum FutureKind<F> {
        Inner { #[pin] fut: F },
        Local { resp: Option<Response<Bytes>> },
    }
}

impl<F> LayerFuture<F> {
    /// Waits for the inner service's future.
    pub fn inner(fut: F) -> Self {
        Self {
            kind: FutureKind::Inner { fut },
        }
    }

    /// Answers with `resp` at once.
    pub fn local(resp: Response<Bytes>) -> Self {
        Self {
            kind: FutureKind::Local { resp: Some(resp) },
        }
    }
}

impl<F> std::fmt::Debug for LayerFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let local = matches!(self.kind, FutureKind::Local { .. });
        f.debug_struct("LayerFuture")
            .field("local", &local)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for LayerFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LayerBody<B>>, E>;

    #[inline]
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
