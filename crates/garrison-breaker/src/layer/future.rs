use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::BreakerBody;
use crate::Permit;

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    /// Dropped before the inner service answers, its permit records nothing and a half-open
    /// probe slot is given back.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F> {
        Called { #[pin] fut: F, permit: Option<Permit> },
        Rejected { resp: Option<Response<Bytes>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(fut: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(resp: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Rejected { resp: Some(resp) },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rejected = matches!(self.kind, Kind::Rejected { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<BreakerBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Called { fut, permit } => {
                let result = ready!(fut.poll(cx));
                if let Some(p) = permit.take() {
                    p.record_result(&result);
                }
                Poll::Ready(result.map(|r| r.map(BreakerBody::inner)))
            }
            Proj::Rejected { resp } => {
                let resp = resp.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(resp.map(BreakerBody::local)))
            }
        }
    }
}
