use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::Info;

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
        Called { #[pin] fut: S::Future, info: Option<Info> },
        Refused { resp: Option<Response<Bytes>> },
        Remote {
            pending: Remote,
            call: Option<(S, Request<ReqB>)>,
            shared: std::sync::Arc<super::Shared>,
        },
    }
}

#[cfg(feature = "redis")]
type Remote = crate::store::redis::Pending;
#[cfg(not(feature = "redis"))]
type Remote = std::convert::Infallible;

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    pub(crate) fn called(fut: S::Future, info: Option<Info>) -> Self {
        Self {
            kind: Kind::Called { fut, info },
        }
    }

    pub(crate) fn refused(resp: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Refused { resp: Some(resp) },
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn remote(
        pending: Remote,
        svc: S,
        req: Request<ReqB>,
        shared: std::sync::Arc<super::Shared>,
    ) -> Self {
        Self {
            kind: Kind::Remote {
                pending,
                call: Some((svc, req)),
                shared,
            },
        }
    }
}

impl<S: Service<Request<ReqB>>, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
            Kind::Remote { .. } => "asking the store",
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

    // without the Redis store every arm returns, and the loop never comes round
    #[cfg_attr(not(feature = "redis"), allow(unreachable_code, unused_variables))]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                Proj::Called { fut, info } => {
                    let mut resp = ready!(fut.poll(cx))?;
                    if let Some(i) = info.take() {
                        i.headers
                            .apply(i.set, i.remaining, i.reset_secs, resp.headers_mut());
                    }
                    return Poll::Ready(Ok(resp));
                }
                Proj::Refused { resp } => {
                    let resp = resp.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(resp.map(B::from)));
                }
                #[cfg(feature = "redis")]
                Proj::Remote {
                    pending,
                    call,
                    shared,
                } => {
                    let verdict = ready!(pending.poll(cx, shared));
                    let (mut svc, req) =
                        call.take().expect("ResponseFuture polled after completion");
                    match verdict {
                        super::Verdict::Pass => Kind::Called {
                            fut: svc.call(req),
                            info: None,
                        },
                        super::Verdict::Allowed(info) => Kind::Called {
                            fut: svc.call(req),
                            info: Some(info),
                        },
                        super::Verdict::Refused(resp) => Kind::Refused { resp: Some(resp) },
                        super::Verdict::Remote(_) => unreachable!("a store answers once"),
                    }
                }
                #[cfg(not(feature = "redis"))]
                Proj::Remote { pending, .. } => match *pending {},
            };
            self.as_mut().project().kind.set(next);
        }
    }
}
