//! The OpenTelemetry bridge (feature `otel`): garrison's request is the current
//! OpenTelemetry context while its handler runs, and with a [`Pipeline`] its server and
//! client spans are spans of the user's SDK pipeline.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use garrison_core::TraceId;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanKind as OtelKind, Status, TraceContextExt, TraceFlags,
    TraceId as OtelTraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::span::{SpanKind, Value};
use crate::w3c::{Incoming, SpanId};

/// The OpenTelemetry SDK pipeline that garrison's spans join: your `SdkTracerProvider`
/// (its resource, sampler, processors and exporter) or the global one. Give it to
/// [`TracerBuilder::pipeline`](crate::TracerBuilder::pipeline).
///
/// With a pipeline, the provider's sampler decides which requests are recorded, the provider's
/// id generator makes the span ids, and every span is handed to the provider's processors; the
/// [`Sampler`](crate::Sampler), sink and queue of garrison's own [`Tracer`](crate::Tracer) are
/// not used.
///
/// ```
/// use garrison_trace::{Pipeline, Tracer};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
///
/// let exporter = InMemorySpanExporter::default();
/// let provider = SdkTracerProvider::builder()
///     .with_simple_exporter(exporter.clone())
///     .build();
/// let tracer = Tracer::builder().pipeline(Pipeline::new(&provider)).build();
/// # let _ = tracer;
/// ```
#[derive(Clone)]
pub struct Pipeline {
    tracer: PipelineTracer,
}

#[derive(Clone)]
enum PipelineTracer {
    Sdk(SdkTracer),
    Global(Arc<BoxedTracer>),
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.tracer {
            PipelineTracer::Sdk(_) => "Pipeline(sdk)",
            PipelineTracer::Global(_) => "Pipeline(global)",
        })
    }
}

/// The instrumentation scope of garrison's spans.
const SCOPE: &str = "garrison-trace";

impl Pipeline {
    /// Spans go to `provider`'s processors, with its resource.
    pub fn new(provider: &SdkTracerProvider) -> Self {
        Self {
            tracer: PipelineTracer::Sdk(
                provider.tracer_with_scope(
                    opentelemetry::InstrumentationScope::builder(SCOPE)
                        .with_version(env!("CARGO_PKG_VERSION"))
                        .build(),
                ),
            ),
        }
    }

    /// Spans go to the global provider as it is when this is called
    /// (`opentelemetry::global::set_tracer_provider` must come first).
    pub fn global() -> Self {
        Self {
            tracer: PipelineTracer::Global(Arc::new(opentelemetry::global::tracer(SCOPE))),
        }
    }

    /// Starts a span under `parent` and returns the context that holds it.
    fn start(&self, builder: SpanBuilder, parent: &Context) -> Context {
        match &self.tracer {
            PipelineTracer::Sdk(t) => parent.with_span(t.build_with_context(builder, parent)),
            PipelineTracer::Global(t) => parent.with_span(t.build_with_context(builder, parent)),
        }
    }
}

/// A request's OpenTelemetry side: the context made current while its handler runs, and the
/// pipeline that records its spans (none: the context only carries garrison's ids).
#[derive(Clone)]
pub(crate) struct OtelRequest {
    pub(crate) cx: Context,
    pipeline: Option<Pipeline>,
    /// When the server span started, by the wall clock (its end is this plus the request's
    /// duration by the tracer's clock, so that a paused clock times it).
    started: SystemTime,
}

impl fmt::Debug for OtelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelRequest").finish_non_exhaustive()
    }
}

fn otel_trace_id(t: TraceId) -> OtelTraceId {
    OtelTraceId::from_bytes(t.to_bytes())
}

fn flags(sampled: bool) -> TraceFlags {
    if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    }
}

fn trace_state(incoming: &Incoming) -> TraceState {
    incoming
        .tracestate
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default()
}

/// The caller's context, as OpenTelemetry's parent of the server span.
pub(crate) fn remote_parent(incoming: &Incoming) -> Context {
    let Some(p) = &incoming.parent else {
        return Context::new();
    };
    Context::new().with_remote_span_context(SpanContext::new(
        otel_trace_id(p.trace_id),
        opentelemetry::trace::SpanId::from_bytes(p.span_id.to_bytes()),
        flags(p.sampled),
        true,
        trace_state(incoming),
    ))
}

/// The ids of a span that garrison's own tracer made, as the current OpenTelemetry context:
/// spans that the handler opens with any OpenTelemetry tracer become its children.
pub(crate) fn garrison_span(
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    incoming: &Incoming,
) -> OtelRequest {
    let state = if incoming.tracestate.is_some() {
        trace_state(incoming)
    } else {
        TraceState::NONE
    };
    OtelRequest {
        cx: Context::new().with_remote_span_context(SpanContext::new(
            otel_trace_id(trace_id),
            opentelemetry::trace::SpanId::from_bytes(span_id.to_bytes()),
            flags(sampled),
            false,
            state,
        )),
        pipeline: None,
        started: SystemTime::UNIX_EPOCH,
    }
}

/// The context of a client span garrison made (`span_id`, under the request's `parent`), for
/// the inner client to see as current.
pub(crate) fn child_context(
    parent: &Context,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
) -> Context {
    let state = parent.span().span_context().trace_state().clone();
    Context::new().with_remote_span_context(SpanContext::new(
        otel_trace_id(trace_id),
        opentelemetry::trace::SpanId::from_bytes(span_id.to_bytes()),
        flags(sampled),
        false,
        state,
    ))
}

/// The ids of a span context: garrison's.
pub(crate) fn ids(cx: &Context) -> Option<(TraceId, SpanId, bool)> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let trace_id = TraceId::from_bytes(sc.trace_id().to_bytes())?;
    let span_id = SpanId::from_bytes(sc.span_id().to_bytes())?;
    Some((trace_id, span_id, sc.is_sampled()))
}

fn key_values(attributes: Vec<(&'static str, Value)>) -> impl Iterator<Item = KeyValue> {
    attributes.into_iter().map(|(k, v)| match v {
        Value::Str(s) => KeyValue::new(k, s),
        Value::Int(i) => KeyValue::new(k, i),
    })
}

fn otel_kind(kind: SpanKind) -> OtelKind {
    match kind {
        SpanKind::Server => OtelKind::Server,
        SpanKind::Client => OtelKind::Client,
    }
}

impl OtelRequest {
    /// Starts a span of `pipeline` under `parent`. Its attributes are asked for only when the
    /// pipeline records it.
    pub(crate) fn start(
        pipeline: &Pipeline,
        kind: SpanKind,
        name: &'static str,
        parent: &Context,
    ) -> Self {
        let started = SystemTime::now();
        let builder = SpanBuilder::from_name(name)
            .with_kind(otel_kind(kind))
            .with_start_time(started);
        Self {
            cx: pipeline.start(builder, parent),
            pipeline: Some(pipeline.clone()),
            started,
        }
    }

    /// Whether the pipeline records this span.
    pub(crate) fn is_recording(&self) -> bool {
        self.pipeline.is_some() && self.cx.span().is_recording()
    }

    /// Names the recorded span and sets its attributes.
    pub(crate) fn describe(&self, name: Cow<'static, str>, attributes: Vec<(&'static str, Value)>) {
        let span = self.cx.span();
        span.update_name(name);
        span.set_attributes(key_values(attributes));
    }

    /// A child span of this one, in the same pipeline: an outgoing call's.
    pub(crate) fn child(&self, kind: SpanKind, name: &'static str) -> Option<Self> {
        let pipeline = self.pipeline.as_ref()?;
        Some(Self::start(pipeline, kind, name, &self.cx))
    }

    /// Ends the recorded span `took` after it started, with these last attributes and, when
    /// it failed, an error status.
    pub(crate) fn end(
        &self,
        took: std::time::Duration,
        attributes: Vec<(&'static str, Value)>,
        error: Option<Cow<'static, str>>,
        event: Option<crate::span::SpanEvent>,
    ) {
        if !self.is_recording() {
            return;
        }
        let span = self.cx.span();
        span.set_attributes(key_values(attributes));
        if let Some(e) = event {
            span.add_event_with_timestamp(e.name, e.time, key_values(e.attributes).collect());
        }
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end_with_timestamp(self.started + took);
    }
}
