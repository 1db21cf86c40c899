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
    /// Events: an `exception` when the service panicked or returned an error.
    pub events: Vec<SpanEvent>,
}

/// An event on a span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    /// `exception`.
    pub name: Cow<'static, str>,
    /// When it happened.
    pub time: SystemTime,
    /// `exception.type`, `exception.message`, `exception.stacktrace`, `code.file.path` and
    /// `code.line.number` (and their older names `code.filepath`, `code.lineno`).
    pub attributes: Vec<(&'static str, Value)>,
}

impl SpanEvent {
    /// The OpenTelemetry `exception` event of what the stack caught.
    pub fn exception(caught: &garrison_core::Caught) -> Self {
        let mut attributes: Vec<(&'static str, Value)> = vec![
            ("exception.type", Value::Str(caught.type_name.clone())),
            (
                "exception.message",
                Value::Str(Cow::Owned(caught.message.clone())),
            ),
        ];
        if let Some(bt) = &caught.backtrace {
            attributes.push(("exception.stacktrace", Value::Str(Cow::Owned(bt.clone()))));
        }
        if let Some((file, line)) = caught.location.as_deref().and_then(|l| l.rsplit_once(':')) {
            // the current semantic conventions' names, and the older ones that many
            // backends still group by
            for key in ["code.file.path", "code.filepath"] {
                attributes.push((key, Value::Str(Cow::Owned(file.to_owned()))));
            }
            if let Ok(n) = line.parse::<i64>() {
                attributes.push(("code.line.number", Value::Int(n)));
                attributes.push(("code.lineno", Value::Int(n)));
            }
        }
        Self {
            name: Cow::Borrowed("exception"),
            time: SystemTime::now(),
            attributes,
        }
    }
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
