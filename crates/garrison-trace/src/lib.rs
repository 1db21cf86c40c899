#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! - [`TraceLayer`] (server): W3C `traceparent`, `tracestate` and `baggage` in, a server span
//!   in the OpenTelemetry HTTP conventions, `x-request-id` in and out, `traceresponse`
//!   optionally, and garrison-core's [`TraceContext`](garrison_core::TraceContext) for
//!   garrison-metrics' exemplars.
//! - [`PropagateLayer`] (client): the context out, with a client span.
//! - [`Tracer`] and [`Sampler`]: parent-based ratio sampling, or error-biased tail sampling
//!   in process (every error and slow request, a share of the rest) with hard bounds on the
//!   spans held.
//! - [`OtlpSink`]: OTLP/gRPC or OTLP/HTTP through opentelemetry-otlp, behind a bounded queue:
//!   a collector that is down or hangs drops spans (counted in
//!   `garrison_trace_spans_dropped_total`), never slows a request.
//! - [`json_logs`]: JSON log lines with `trace_id`, `span_id` and `request_id`, with
//!   redaction of credentials.
//!
//! Trace context parsing is Garrison's own ([`parse_traceparent`], [`valid_tracestate`],
//! [`valid_baggage`]): strict, bounded, allocation-free, and checked against
//! opentelemetry's `TraceContextPropagator` in the tests.
//!
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
pub mod ids;
mod layer;
#[cfg(feature = "logs")]
mod logs;
#[cfg(feature = "otel")]
mod otel;
#[cfg(feature = "otlp")]
mod otlp;
mod pii;
mod propagate;
mod redact;
mod sampler;
mod span;
#[cfg(feature = "otel")]
mod tail;
mod tracer;
mod w3c;

pub use context::{current, RequestContext, RequestId};
pub use layer::{
    Entered, ResponseFuture, TraceBody, TraceLayer, TraceService, TracedRequest, MAX_REQUEST_ID,
};
#[cfg(feature = "logs")]
pub use logs::{json_logs, JsonLogs, MAX_FIELD};
#[cfg(feature = "otel")]
pub use otel::Pipeline;
#[cfg(feature = "otlp")]
pub use otlp::{OtlpConfig, OtlpError, OtlpSink, Protocol};
pub use pii::PiiPattern;
pub use propagate::{PropagateFuture, PropagateLayer, PropagateService};
pub use redact::Redaction;
pub use sampler::Sampler;
pub use span::{SpanEvent, SpanKind, SpanRecord, Value};
#[cfg(feature = "otel")]
pub use tail::{ErrorBiasedProcessor, ErrorBiasedProcessorBuilder, TailDrop};
pub use tracer::{BoxFuture, DropReason, SpanSink, Tracer, TracerBuilder};
pub use w3c::{
    format_traceparent, parse_traceparent, valid_baggage, valid_tracestate, Incoming, Parent,
    SpanId, MAX_BAGGAGE, MAX_BAGGAGE_MEMBERS, MAX_TRACESTATE, MAX_TRACESTATE_MEMBERS,
};
