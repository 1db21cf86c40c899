use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::decision::{Allowance, PendingVerdict, Verdict};

pin_project! {
    /// The response future of [`RateLimitService`](super::RateLimitService).
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        kind: Kind<S, ReqB>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Called { #[pin] fut: S::Future, allowance: Option<Allowance> },
        Refused { resp: Option<Response<Bytes>> },
        Pending {
            pending: PendingVerdict,
            call: Option<(S, Request<ReqB>)>,
        },
    }
}

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    pub(crate) fn called(fut: S::Future, allowance: Option<Allowance>) -> Self {
        Self {
            kind: Kind::Called { fut, allowance },
        }
    }

    pub(crate) fn refused(resp: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Refused { resp: Some(resp) },
        }
    }

    pub(crate) fn pending(pending: PendingVerdict, svc: S, req: Request<ReqB>) -> Self {
        Self {
            kind: Kind::Pending {
                pending,
                call: Some((svc, req)),
            },
        }
    }
}

impl<S: Service<Request<ReqB>>, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
            Kind::Pending { .. } => "asking the store",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqB, B> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                Proj::Called { fut, allowance } => {
                    let mut resp = ready!(fut.poll(cx))?;
                    if let Some(a) = allowance.take() {
                        a.apply(resp.headers_mut());
                    }
                    return Poll::Ready(Ok(resp));
                }
                Proj::Refused { resp } => {
                    let resp = resp.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(resp.map(B::from)));
                }
                Proj::Pending { pending, call } => {
                    let verdict = ready!(Pin::new(pending).poll(cx));
                    let (mut svc, req) =
                        call.take().expect("ResponseFuture polled after completion");
                    match verdict {
                        Verdict::Pass => Kind::Called {
                            fut: svc.call(req),
                            allowance: None,
                        },
                        Verdict::Allowed(a) => Kind::Called {
                            fut: svc.call(req),
                            allowance: Some(a),
                        },
                        Verdict::Refused(resp) => Kind::Refused { resp: Some(resp) },
                        Verdict::Pending(_) => unreachable!("a store answers once"),
                    }
                }
            };
            self.as_mut().project().kind.set(next);
        }
    }
}
