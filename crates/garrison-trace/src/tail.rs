//! `ErrorBiasedProcessor`: tail-based sampling of whole local traces, as an OpenTelemetry
//! `SpanProcessor`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status, TraceContextExt, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;

use crate::sampler::ratio_keeps;

/// Why [`ErrorBiasedProcessor`] dropped spans without a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailDrop {
    /// A trace held more spans than [`max_spans_per_trace`](ErrorBiasedProcessorBuilder::max_spans_per_trace).
    TraceTooLarge,
    /// More spans were held, across traces, than [`max_pending`](ErrorBiasedProcessorBuilder::max_pending):
    /// the oldest undecided trace was let go.
    PendingLimit,
}

/// Keeps or drops whole local traces when their local root ends: a span processor that you
/// put in front of your exporter's processor in any OpenTelemetry SDK pipeline.
///
/// Every span of a trace that is not decided yet (garrison's server span, the handler's
/// `#[instrument]` spans, database and client spans) is held until the trace's local root
/// (a span without a parent in this process, such as the server span) ends. Then the whole
/// trace goes on to the next processor if the root ended in error (status `Error`), took at
/// least [`slow`](ErrorBiasedProcessorBuilder::slow), was sampled by a remote caller, or
/// falls in [`ratio`](ErrorBiasedProcessorBuilder::ratio) (by trace id, as every service
/// with the same ratio decides alike); otherwise it is dropped. Spans that end after the
/// decision follow it. What is held is bounded per trace and in all; what the bounds drop is
/// counted ([`dropped`](Self::dropped)).
///
/// The provider's sampler must record the spans it is to decide on: `Sampler::AlwaysOn`,
/// or `ParentBased(AlwaysOn)` when callers' unsampled traces should stay unrecorded.
///
/// ```
/// use std::time::Duration;
/// use garrison_trace::ErrorBiasedProcessor;
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
///
/// let exporter = InMemorySpanExporter::default();
/// let tail = ErrorBiasedProcessor::builder(SimpleSpanProcessor::new(exporter.clone()))
///     .ratio(0.1)
///     .slow(Duration::from_secs(1))
///     .build();
/// let provider = SdkTracerProvider::builder().with_span_processor(tail).build();
/// # let _ = provider;
/// ```
pub struct ErrorBiasedProcessor<P> {
    next: P,
    ratio: f64,
    slow: Duration,
    max_pending: usize,
    max_spans_per_trace: usize,
    state: Mutex<State>,
    stats: Arc<TailStats>,
}

#[derive(Debug, Default)]
struct TailStats {
    kept: AtomicU64,
    discarded: AtomicU64,
    too_large: AtomicU64,
    pending_limit: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Spans of undecided traces, oldest trace first.
    pending: HashMap<TraceId, Vec<SpanData>>,
    order: VecDeque<TraceId>,
    held: usize,
    /// Traces decided recently, for the spans that end after their root.
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<TraceId>,
}

/// The most recent decisions remembered for late spans.
const DECISIONS: usize = 4096;

impl State {
    fn remember(&mut self, trace: TraceId, keep: bool) {
        if self.decided.insert(trace, keep).is_none() {
            self.decided_order.push_back(trace);
            if self.decided_order.len() > DECISIONS {
                if let Some(old) = self.decided_order.pop_front() {
                    self.decided.remove(&old);
                }
            }
        }
    }

    /// The spans held for `trace`. Its place in `order` is left behind, and skipped (or
    /// swept) later: a search of the queue at every decision would cost as much as it holds.
    fn take(&mut self, trace: TraceId) -> Vec<SpanData> {
        let spans = self.pending.remove(&trace).unwrap_or_default();
        self.held -= spans.len();
        spans
    }

    fn hold(&mut self, trace: TraceId, span: SpanData) {
        let spans = self.pending.entry(trace).or_default();
        if spans.is_empty() {
            self.order.push_back(trace);
            if self.order.len() > 2 * self.pending.len() + 64 {
                let pending = &self.pending;
                self.order.retain(|t| pending.contains_key(t));
            }
        }
        self.pending.entry(trace).or_default().push(span);
        self.held += 1;
    }
}

impl<P> fmt::Debug for ErrorBiasedProcessor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorBiasedProcessor")
            .field("ratio", &self.ratio)
            .field("slow", &self.slow)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ErrorBiasedProcessor`].
#[derive(Debug)]
#[must_use]
pub struct ErrorBiasedProcessorBuilder<P> {
    next: P,
    ratio: f64,
    slow: Duration,
    max_pending: usize,
    max_spans_per_trace: usize,
}

impl<P> ErrorBiasedProcessorBuilder<P> {
    /// The share of other traces kept (0 to 1). Default: 0.1.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Traces whose local root took at least this long are kept. Default: 1 s.
    pub fn slow(mut self, slow: Duration) -> Self {
        self.slow = slow;
        self
    }

    /// The most spans held across undecided traces. Default: 16 384.
    pub fn max_pending(mut self, spans: usize) -> Self {
        self.max_pending = spans.max(1);
        self
    }

    /// The most spans one undecided trace may hold. Default: 128.
    pub fn max_spans_per_trace(mut self, spans: usize) -> Self {
        self.max_spans_per_trace = spans.max(1);
        self
    }

    /// The processor.
    pub fn build(self) -> ErrorBiasedProcessor<P> {
        ErrorBiasedProcessor {
            next: self.next,
            ratio: self.ratio,
            slow: self.slow,
            max_pending: self.max_pending,
            max_spans_per_trace: self.max_spans_per_trace,
            state: Mutex::new(State::default()),
            stats: Arc::default(),
        }
    }
}

impl<P> ErrorBiasedProcessor<P> {
    /// A builder whose kept traces go to `next` (a `BatchSpanProcessor` in production).
    pub fn builder(next: P) -> ErrorBiasedProcessorBuilder<P> {
        ErrorBiasedProcessorBuilder {
            next,
            ratio: 0.1,
            slow: Duration::from_secs(1),
            max_pending: 16_384,
            max_spans_per_trace: 128,
        }
    }

    /// Spans dropped so far for `why`.
    pub fn dropped(&self, why: TailDrop) -> u64 {
        match why {
            TailDrop::TraceTooLarge => self.stats.too_large.load(Ordering::Relaxed),
            TailDrop::PendingLimit => self.stats.pending_limit.load(Ordering::Relaxed),
        }
    }

    /// Local traces kept and discarded so far.
    pub fn traces(&self) -> (u64, u64) {
        (
            self.stats.kept.load(Ordering::Relaxed),
            self.stats.discarded.load(Ordering::Relaxed),
        )
    }

    /// Spans held now, waiting for their local roots to end.
    pub fn pending(&self) -> usize {
        self.state.lock().held
    }

    fn keeps(&self, root: &SpanData) -> bool {
        matches!(root.status, Status::Error { .. })
            || root
                .end_time
                .duration_since(root.start_time)
                .is_ok_and(|took| took >= self.slow)
            || self.ratio_keeps(root.span_context.trace_id())
    }

    fn ratio_keeps(&self, trace: TraceId) -> bool {
        garrison_core::TraceId::from_bytes(trace.to_bytes())
            .is_some_and(|t| ratio_keeps(self.ratio, t))
    }
}

fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

impl<P: SpanProcessor> SpanProcessor for ErrorBiasedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        // a remote caller that sampled the trace decides for it: kept whatever happens here
        let parent = cx.span();
        let psc = parent.span_context();
        if psc.is_remote() && psc.is_sampled() {
            self.state.lock().remember(psc.trace_id(), true);
        }
        self.next.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let trace = span.span_context.trace_id();
        let root = is_local_root(&span);
        let mut state = self.state.lock();
        let decided = state.decided.get(&trace).copied();
        if decided.is_some() || root {
            let keep = decided.unwrap_or_else(|| self.keeps(&span));
            let held = if root { state.take(trace) } else { Vec::new() };
            if decided.is_none() {
                state.remember(trace, keep);
            }
            drop(state);
            if root {
                self.count(keep);
            }
            if keep {
                for s in held.into_iter().chain(std::iter::once(span)) {
                    self.next.on_end(s);
                }
            }
            return;
        }
        let spans = state.pending.get(&trace).map_or(0, Vec::len);
        if spans >= self.max_spans_per_trace {
            self.stats.too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        while state.held >= self.max_pending {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            let gone = state.pending.remove(&oldest).map_or(0, |v| v.len());
            state.held -= gone;
            self.stats
                .pending_limit
                .fetch_add(gone as u64, Ordering::Relaxed);
        }
        state.hold(trace, span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.next.set_resource(resource);
    }
}

impl<P> ErrorBiasedProcessor<P> {
    fn count(&self, keep: bool) {
        let c = if keep {
            &self.stats.kept
        } else {
            &self.stats.discarded
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
