//! [`ResponseFuture`]: waits for a slot if it must, then the inner service's future, holding
//! the slot until the response is ready.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use garrison_core::LayerBody;
use http::Response;
use pin_project_lite::pin_project;
use tower::Service;

use super::Queued;
use crate::Permit;

pin_project! {
    /// The response future of [`AdmissionService`]: waits for a slot if it must, then calls
    /// the inner service and holds the slot until its response is ready.
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<S: Service<R>, R> {
        Waiting { waiting: Pin<Box<Waiting<S, R>>> },
        Called { #[pin] fut: S::Future, permit: Option<Permit> },
        Shed { resp: Option<Response<Bytes>> },
    }
}

pin_project! {
    struct Waiting<S, R> {
        #[pin]
        queued: Queued,
        call: Option<(S, R)>,
    }
}

impl<S: Service<R>, R> ResponseFuture<S, R> {
    /// The inner service's future, holding the slot of `permit`.
    pub(super) fn called(fut: S::Future, permit: Permit) -> Self {
        Self {
            state: State::Called {
                fut,
                permit: Some(permit),
            },
        }
    }

    /// A wait for a slot, then a call of `svc` (polled ready) with `req`.
    pub(super) fn waiting(queued: Queued, svc: S, req: R) -> Self {
        Self {
            // boxed: the waiting path's state (a timer, the request) stays out of the fast
            // path's future
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    queued,
                    call: Some((svc, req)),
                }),
            },
        }
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, R, ResB> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<LayerBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                Proj::Called { fut, permit } => {
                    let result = ready!(fut.poll(cx));
                    drop(permit.take());
                    return Poll::Ready(result.map(|r| r.map(LayerBody::inner)));
                }
                Proj::Shed { resp } => {
                    let resp = resp.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(resp.map(LayerBody::local)));
                }
                Proj::Waiting { waiting } => {
                    let w = waiting.as_mut().project();
                    match ready!(w.queued.poll(cx)) {
                        Ok(permit) => {
                            let (mut svc, req) = w.call.take().expect("called once");
                            let fut = svc.call(req);
                            state.set(State::Called {
                                fut,
                                permit: Some(permit),
                            });
                        }
                        Err(resp) => state.set(State::Shed { resp: Some(resp) }),
                    }
                }
            }
        }
    }
}
