//! Finished spans, as the exporter receives them.

use std::borrow::Cow;
use std::time::SystemTime;

use garrison_core::TraceId;

use crate::w3c::SpanId;

/// The kind of a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// An incoming request.
    Server,
    /// An outgoing request.
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// An integer.
    Int(i64),
}

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span, if any.
    pub parent: Option<SpanId>,
    /// Whether the parent is in another process.
    pub parent_remote: bool,
    /// `GET /users/{id}`.
    pub name: Cow<'static, str>,
    /// Server or client.
    pub kind: SpanKind,
    /// Start (wall clock).
    pub start: SystemTime,
    /// End (wall clock).
    pub end: SystemTime,
    /// Attributes in the OpenTelemetry HTTP conventions.
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed (5xx for a server span, any error for a client span).
    pub error: Option<Cow<'static, str>>,
}

impl SpanRecord {
    /// An attribute by key.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}
