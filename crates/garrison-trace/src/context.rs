//! The trace context of the request being served, for outgoing calls and logs.

use std::cell::RefCell;
use std::sync::Arc;

use garrison_core::TraceId;
use http::HeaderValue;

use crate::tracer::LocalTrace;
use crate::w3c::SpanId;

/// The trace context of one request: put in its extensions by
/// [`TraceLayer`](crate::TraceLayer), and current while its handler runs.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The server span of this request (the parent of outgoing calls).
    pub span_id: SpanId,
    /// The sampled flag sent downstream.
    pub sampled: bool,
    /// The request id (`x-request-id`).
    pub request_id: RequestId,
    /// The caller's `tracestate`, passed on.
    pub tracestate: Option<HeaderValue>,
    /// The caller's `baggage`, passed on.
    pub baggage: Option<HeaderValue>,
    pub(crate) local: Option<Arc<LocalTrace>>,
    /// The request's OpenTelemetry context (and, with a pipeline, its server span).
    #[cfg(feature = "otel")]
    pub(crate) otel: Option<crate::otel::OtelRequest>,
}

impl RequestContext {
    /// Whether this request's spans are being recorded.
    pub fn is_recording(&self) -> bool {
        #[cfg(feature = "otel")]
        if self.otel.as_ref().is_some_and(|o| o.is_recording()) {
            return true;
        }
        self.local.is_some()
    }

    /// The request's OpenTelemetry context: its server span (or garrison's ids as a span
    /// context), the one that is `opentelemetry::Context::current()` while the handler runs.
    #[cfg(feature = "otel")]
    pub fn otel_context(&self) -> Option<&opentelemetry::Context> {
        self.otel.as_ref().map(|o| &o.cx)
    }
}

/// A request id: the caller's (printable, at most
/// [`MAX_REQUEST_ID`](crate::MAX_REQUEST_ID) bytes) or 32 random hex digits of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Repr);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Repr {
    /// Ours, made a header value once: the response and every outgoing call share it.
    Made(HeaderValue),
    Given(HeaderValue),
}

impl RequestId {
    pub(crate) fn made(hex: [u8; 32]) -> Self {
        // owned by one shared allocation: clones for the response and the outgoing calls
        // only count references (a copied `Bytes` would allocate again on its first clone)
        Self(Repr::Made(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
                .expect("hex is a valid header value"),
        ))
    }

    pub(crate) fn given(v: HeaderValue) -> Self {
        Self(Repr::Given(v))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Made(v) | Repr::Given(v) => v.to_str().unwrap_or_default(),
        }
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            Repr::Made(v) | Repr::Given(v) => v.clone(),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RequestContext>>> = const { RefCell::new(None) };
}

/// The context of the request whose handler is running on this thread: set while
/// [`TraceLayer`](crate::TraceLayer)'s future is polled. A task spawned by the handler does
/// not inherit it; pass [`RequestContext`] from the request's extensions instead.
pub fn current() -> Option<Arc<RequestContext>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Makes `ctx` current until dropped, restoring the previous one.
pub(crate) struct CurrentGuard(Option<Arc<RequestContext>>);

impl CurrentGuard {
    pub(crate) fn set(ctx: &Arc<RequestContext>) -> Self {
        Self(CURRENT.with(|c| c.borrow_mut().replace(ctx.clone())))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}
