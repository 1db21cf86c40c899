//! [`TracedRequest`]: one request's trace while it is served.

use http::header::{HeaderName, HeaderValue};
use http::Response;

use super::body::TraceBody;
use super::finish::Finisher;
use super::TRACERESPONSE;
use crate::context::{CurrentGuard, RequestContext};
use crate::w3c::format_traceparent;

/// One request's trace, from [`TraceLayer::start`](super::TraceLayer::start) until its response body ends: ids,
/// sampling, the server span and the request id.
pub struct TracedRequest {
    pub(super) finisher: Finisher,
    /// The layer's request id header, interned: see [`interned`].
    pub(super) request_id: &'static HeaderName,
    pub(super) trace_response: bool,
}

impl std::fmt::Debug for TracedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedRequest")
            .field("request_id", &self.finisher.ctx.request_id)
            .finish_non_exhaustive()
    }
}

/// While alive, the request of a [`TracedRequest`] is [`current`](crate::current) (and its
/// `tracing` span entered): made by [`TracedRequest::enter`].
pub struct Entered<'a> {
    _span: Option<tracing::span::Entered<'a>>,
    _current: CurrentGuard,
    #[cfg(feature = "otel")]
    _otel: Option<opentelemetry::ContextGuard>,
}

impl std::fmt::Debug for Entered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").finish_non_exhaustive()
    }
}

impl TracedRequest {
    /// Makes this request [`current`](crate::current) until the guard drops: hold it while
    /// calling and polling the inner service, so that its logs and outgoing calls carry the
    /// trace.
    #[inline(always)]
    pub fn enter(&self) -> Entered<'_> {
        let ctx = &self.finisher.ctx;
        Entered {
            _span: self.finisher.span.as_ref().map(|s| s.enter()),
            _current: CurrentGuard::set(ctx),
            #[cfg(feature = "otel")]
            _otel: ctx.otel.as_ref().map(|o| o.cx.clone().attach()),
        }
    }

    /// The request's context: ids, sampling, `tracestate` and `baggage`.
    pub fn context(&self) -> &RequestContext {
        &self.finisher.ctx
    }

    /// The inner service answered `resp`: it gets the request id (and `traceresponse` when
    /// asked for), and the server span ends when its body ends.
    #[inline]
    pub fn respond<B>(self, resp: Response<B>) -> Response<TraceBody<B>> {
        let (mut head, body) = resp.into_parts();
        let body = self.respond_parts(&mut head, body);
        Response::from_parts(head, body)
    }

    /// The trace id when this request's spans are recorded, `None` when it is not sampled:
    /// what the [`TraceContext`](garrison_core::TraceContext) this puts in the request's
    /// extensions gives an exemplar, for a stack that hands it on directly.
    #[inline]
    pub fn recorded_trace_id(&self) -> Option<garrison_core::TraceId> {
        let ctx = &self.finisher.ctx;
        ctx.is_recording().then_some(ctx.trace_id)
    }

    /// [`respond`](Self::respond) for a response taken apart: `head` gets the headers, and
    /// the span ends when `body` ends. A stack that changes several parts of a response puts
    /// it together once instead of once per part.
    #[inline]
    pub fn respond_parts<B>(self, head: &mut http::response::Parts, body: B) -> TraceBody<B> {
        let Self {
            mut finisher,
            request_id,
            trace_response,
        } = self;
        finisher.status = head.status.as_u16();
        if let Some(c) = head.extensions.get::<garrison_core::Caught>() {
            finisher.caught_cold(c);
        }
        let ctx = &finisher.ctx;
        let h = &mut head.headers;
        h.insert(request_id, ctx.request_id.to_header_value());
        if trace_response {
            let tp = format_traceparent(ctx.trace_id, ctx.span_id, ctx.sampled);
            if let Ok(v) = HeaderValue::from_bytes(&tp) {
                h.insert(TRACERESPONSE.clone(), v);
            }
        }
        let needs_end = finisher.needs_end();
        TraceBody {
            inner: body,
            finisher: needs_end.then_some(finisher),
        }
    }

    /// The inner service failed with an error instead of a response: the span ends as an
    /// error (`service_error`).
    pub fn failed(self) {
        let mut finisher = self.finisher;
        finisher.status = 500;
        finisher.finish(Some("service_error"));
    }
}
