//! Trace propagation for tower and axum: every request joins its caller's distributed trace,
//! outgoing calls carry it on, spans reach any OpenTelemetry backend over OTLP, and every
//! log line names its trace.
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
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use garrison_trace::{Sampler, TraceLayer, Tracer};
//! use http::Request;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // with .sink(OtlpSink::new(OtlpConfig::from_env())?) spans go to a collector
//! let tracer = Tracer::builder().sampler(Sampler::Ratio(1.0)).build();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "hi" }))
//!     .layer(TraceLayer::new(&tracer).trace_response(true));
//!
//! let req = Request::get("/users/7")
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(Body::empty())
//!     .unwrap();
//! let resp = app.oneshot(req).await.unwrap();
//! let tr = resp.headers()["traceresponse"].to_str().unwrap();
//! assert!(tr.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")); // the caller's trace
//! assert!(tr.ends_with("-01"));
//! assert_eq!(resp.headers()["x-request-id"].len(), 32);
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod context;
pub mod ids;
mod layer;
#[cfg(feature = "logs")]
mod logs;
#[cfg(feature = "otel")]
mod otel;
#[cfg(feature = "otlp")]
mod otlp;
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
