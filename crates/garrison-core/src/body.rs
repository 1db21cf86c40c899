//! A response body that is either the inner service's or the layer's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of a Garrison layer that may answer by itself: the inner service's
    /// body, or the small body of a response the layer made (a `429`, a `503`).
    pub struct LayerBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = Proj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Rejection { data: Option<Bytes> },
    }
}

impl<B> LayerBody<B> {
    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }

    /// A body the layer made.
    pub fn local(data: Bytes) -> Self {
        Self {
            kind: BodyKind::Rejection {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether the layer made this body rather than the inner service.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, BodyKind::Rejection { .. })
    }
}

impl<B> From<Bytes> for LayerBody<B> {
    /// A body the layer made (so that a layer above that answers by itself, such as the rate
    /// limiter, can make one of these).
    fn from(data: Bytes) -> Self {
        Self::local(data)
    }
}

impl<B> std::fmt::Debug for LayerBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBody")
            .field("local", &self.is_local())
            .finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes>> Body for LayerBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            Proj::Inner { body } => body.poll_frame(cx),
            Proj::Rejection { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Rejection { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Rejection { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
