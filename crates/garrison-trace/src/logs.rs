//! JSON log lines that name their request: `trace_id`, `span_id` and `request_id` on every
//! line logged inside a request handled by [`TraceLayer`](crate::TraceLayer).

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::redact::Redaction;

/// The longest field value written; longer ones are cut (a log line stays bounded whatever a
/// client sent).
pub const MAX_FIELD: usize = 2048;

/// A `tracing-subscriber` layer writing one JSON object per event:
/// `{"timestamp","level","target","message",…fields,"trace_id","span_id","request_id"}`.
/// Fields named in the [`Redaction`] are written as `"[redacted]"`.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(garrison_trace::json_logs());
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(user = "ada", password = "hunter2", "signed in");
/// });
/// ```
#[derive(Debug)]
pub struct JsonLogs<W> {
    writer: W,
    redaction: Redaction,
}

/// JSON lines on standard output, with the default [`Redaction`].
pub fn json_logs() -> JsonLogs<fn() -> std::io::Stdout> {
    JsonLogs {
        writer: std::io::stdout,
        redaction: Redaction::default(),
    }
}

impl<W> JsonLogs<W> {
    /// Writes to `writer` instead.
    pub fn with_writer<W2>(self, writer: W2) -> JsonLogs<W2>
    where
        W2: for<'a> MakeWriter<'a> + 'static,
    {
        JsonLogs {
            writer,
            redaction: self.redaction,
        }
    }

    /// What to redact.
    pub fn redaction(mut self, r: Redaction) -> Self {
        self.redaction = r;
        self
    }
}

#[derive(Default)]
struct Ids {
    trace_id: String,
    span_id: String,
    request_id: String,
}

/// The request a span was opened in.
struct RequestSpan(std::sync::Arc<crate::RequestContext>);

fn request_ids(out: &mut String, cur: &crate::RequestContext) {
    let mut t = [0u8; 32];
    let mut sp = [0u8; 16];
    out.push_str(",\"trace_id\":\"");
    out.push_str(cur.trace_id.to_hex(&mut t));
    out.push_str("\",\"span_id\":\"");
    out.push_str(cur.span_id.to_hex(&mut sp));
    out.push_str("\",\"request_id\":");
    garrison_core::push_json_string(out, cur.request_id.as_str());
}

/// Outside any request of garrison's, the current OpenTelemetry span (one of the user's) names
/// the trace.
#[cfg(feature = "otel")]
fn otel_ids(out: &mut String) {
    let cx = opentelemetry::Context::current();
    let Some((trace, span, _)) = crate::otel::ids(&cx) else {
        return;
    };
    let mut t = [0u8; 32];
    let mut sp = [0u8; 16];
    out.push_str(",\"trace_id\":\"");
    out.push_str(trace.to_hex(&mut t));
    out.push_str("\",\"span_id\":\"");
    out.push_str(span.to_hex(&mut sp));
    out.push('"');
}

struct IdVisitor<'a>(&'a mut Ids);

impl Visit for IdVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let slot = match field.name() {
            "trace_id" => &mut self.0.trace_id,
            "span_id" => &mut self.0.span_id,
            "request_id" => &mut self.0.request_id,
            _ => return,
        };
        slot.clear();
        let _ = write!(slot, "{value:?}");
        let cut = garrison_core::truncate_str(slot, 128).len();
        slot.truncate(cut);
    }
}

struct JsonVisitor<'a> {
    out: &'a mut String,
    message: Option<String>,
    redaction: &'a Redaction,
}

impl JsonVisitor<'_> {
    fn key(&mut self, name: &str) {
        self.out.push(',');
        garrison_core::push_json_string(self.out, name);
        self.out.push(':');
    }

    fn text(&mut self, field: &Field, s: &str) {
        let s = garrison_core::truncate_str(s, MAX_FIELD);
        if field.name() == "message" {
            self.message = Some(self.redaction.redact_text(s).into_owned());
            return;
        }
        self.key(field.name());
        if self.redaction.is_secret_param(field.name())
            || self.redaction.is_secret_header(field.name())
        {
            self.out.push_str("\"[redacted]\"");
        } else {
            garrison_core::push_json_string(self.out, &self.redaction.redact_text(s));
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.text(field, &s);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field.name());
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }
}

impl<S, W> Layer<S> for JsonLogs<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let meta = attrs.metadata();
        if meta.target() == "garrison_trace" && meta.name() == "request" {
            let mut ids = Ids::default();
            attrs.record(&mut IdVisitor(&mut ids));
            span.extensions_mut().insert(ids);
        } else if let Some(cur) = crate::context::current() {
            // a span opened while a request is served (the handler's own, or one that a
            // spawned task carries with `.in_current_span()`) keeps the request's ids for the
            // lines logged inside it, on whatever task or thread they are logged
            span.extensions_mut().insert(RequestSpan(cur));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut out = String::with_capacity(256);
        out.push_str("{\"timestamp\":\"");
        out.push_str(&garrison_core::rfc3339(std::time::SystemTime::now(), 6));
        out.push_str("\",\"level\":\"");
        out.push_str(meta.level().as_str());
        out.push_str("\",\"target\":");
        garrison_core::push_json_string(&mut out, meta.target());
        let mut v = JsonVisitor {
            out: &mut out,
            message: None,
            redaction: &self.redaction,
        };
        event.record(&mut v);
        let message = v.message.take();
        if let Some(m) = message {
            out.push_str(",\"message\":");
            garrison_core::push_json_string(&mut out, &m);
        }
        let mut named = true;
        if let Some(cur) = crate::context::current() {
            request_ids(&mut out, &cur);
        } else if let Some(scope) = ctx.event_scope(event) {
            named = false;
            for span in scope {
                let ext = span.extensions();
                if let Some(RequestSpan(cur)) = ext.get::<RequestSpan>() {
                    request_ids(&mut out, cur);
                    named = true;
                    break;
                }
                if let Some(ids) = ext.get::<Ids>() {
                    for (k, val) in [
                        ("trace_id", &ids.trace_id),
                        ("span_id", &ids.span_id),
                        ("request_id", &ids.request_id),
                    ] {
                        out.push_str(",\"");
                        out.push_str(k);
                        out.push_str("\":");
                        garrison_core::push_json_string(&mut out, val);
                    }
                    named = true;
                    break;
                }
            }
        } else {
            named = false;
        }
        #[cfg(feature = "otel")]
        if !named {
            otel_ids(&mut out);
        }
        #[cfg(not(feature = "otel"))]
        let _ = named;
        out.push_str("}\n");
        let _ = self.writer.make_writer().write_all(out.as_bytes());
    }
}
