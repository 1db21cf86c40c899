//! A part of the stack that is on or off: its service, or the inner service untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// A part that is turned on (`On`, the layer's service around the inner one) or off (`Off`,
/// the inner service itself).
#[derive(Clone, Debug)]
pub enum Toggled<A, B> {
    /// The layer is on.
    On(A),
    /// The layer is off.
    Off(B),
}

impl<A, B> Toggled<A, B> {
    /// `layer` around `inner` when there is one, else `inner`.
    pub(crate) fn wrap<L>(layer: Option<&L>, inner: B) -> Self
    where
        L: Layer<B, Service = A>,
    {
        match layer {
            Some(l) => Toggled::On(l.layer(inner)),
            None => Toggled::Off(inner),
        }
    }
}

impl<A, B, ReqB, ResA, ResB> Service<Request<ReqB>> for Toggled<A, B>
where
    A: Service<Request<ReqB>, Response = Response<ResA>>,
    B: Service<Request<ReqB>, Response = Response<ResB>, Error = A::Error>,
{
    type Response = Response<ToggledBody<ResA, ResB>>;
    type Error = A::Error;
    type Future = ToggledFuture<A::Future, B::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Toggled::On(a) => a.poll_ready(cx),
            Toggled::Off(b) => b.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self {
            Toggled::On(a) => ToggledFuture::On { fut: a.call(req) },
            Toggled::Off(b) => ToggledFuture::Off { fut: b.call(req) },
        }
    }
}

pin_project! {
    /// The response future of [`Toggled`].
    #[project = FutProj]
    #[allow(missing_docs)] // the variants' fields
    pub enum ToggledFuture<A, B> {
        /// The layer's future.
        On { #[pin] fut: A },
        /// The inner service's future.
        Off { #[pin] fut: B },
    }
}

impl<A, B> std::fmt::Debug for ToggledFuture<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToggledFuture::On { .. } => "ToggledFuture::On",
            ToggledFuture::Off { .. } => "ToggledFuture::Off",
        })
    }
}

impl<A, B, ResA, ResB, E> Future for ToggledFuture<A, B>
where
    A: Future<Output = Result<Response<ResA>, E>>,
    B: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ToggledBody<ResA, ResB>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FutProj::On { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|body| ToggledBody::On { body }))),
            FutProj::Off { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|body| ToggledBody::Off { body }))),
        }
    }
}

pin_project! {
    /// The response body of [`Toggled`].
    #[project = BodyProj]
    #[allow(missing_docs)] // the variants' fields
    pub enum ToggledBody<A, B> {
        /// The layer's body.
        On { #[pin] body: A },
        /// The inner service's body.
        Off { #[pin] body: B },
    }
}

impl<A, B> std::fmt::Debug for ToggledBody<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToggledBody::On { .. } => "ToggledBody::On",
            ToggledBody::Off { .. } => "ToggledBody::Off",
        })
    }
}

impl<A: From<Bytes>, B> From<Bytes> for ToggledBody<A, B> {
    /// A body made by a layer above (a `429`): the layer's own kind.
    fn from(data: Bytes) -> Self {
        ToggledBody::On {
            body: A::from(data),
        }
    }
}

impl<A, B> Body for ToggledBody<A, B>
where
    A: Body<Data = Bytes>,
    B: Body<Data = Bytes, Error = A::Error>,
{
    type Data = Bytes;
    type Error = A::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, A::Error>>> {
        match self.project() {
            BodyProj::On { body } => body.poll_frame(cx),
            BodyProj::Off { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ToggledBody::On { body } => body.is_end_stream(),
            ToggledBody::Off { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            ToggledBody::On { body } => body.size_hint(),
            ToggledBody::Off { body } => body.size_hint(),
        }
    }
}
