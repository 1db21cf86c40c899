//! The tracer: sampling, the spans a request holds until its root ends, the bounded export
//! queue and the background exporter.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_core::{SharedClock, TraceId};
use garrison_metrics::{Collector, MetricType, MetricWriter, MetricsRegistry};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::sampler::{Sampler, Start};
use crate::span::SpanRecord;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where finished spans go: OTLP ([`OtlpSink`](crate::OtlpSink)), or your own.
pub trait SpanSink: Send + Sync + 'static {
    /// Sends one batch. Called by one background task, one batch at a time, and cut off at
    /// the tracer's export timeout; an error drops the batch (counted).
    fn export(&self, batch: Vec<SpanRecord>) -> BoxFuture<'_, Result<(), String>>;
}

/// Why spans were dropped, as in `garrison_trace_spans_dropped_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The export queue was full (the collector is slow, down or hanging).
    QueueFull,
    /// The export failed or timed out.
    ExportFailed,
    /// A request made more spans than a trace may hold.
    TraceTooLarge,
    /// Too many spans were held, across requests, waiting for their root to end.
    PendingLimit,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::TraceTooLarge,
        DropReason::PendingLimit,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::TraceTooLarge => "trace_too_large",
            DropReason::PendingLimit => "pending_limit",
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    exported: AtomicU64,
    dropped: [AtomicU64; 4],
    kept: AtomicU64,
    discarded: AtomicU64,
}

pub(crate) struct TracerInner {
    pub(crate) sampler: Sampler,
    pub(crate) clock: SharedClock,
    tx: Option<mpsc::Sender<SpanRecord>>,
    flushes: Option<mpsc::Sender<oneshot::Sender<()>>>,
    stats: Arc<Stats>,
    pending: AtomicUsize,
    max_pending: usize,
    pub(crate) max_spans_per_trace: usize,
    #[cfg(feature = "otel")]
    pub(crate) pipeline: Option<crate::otel::Pipeline>,
}

/// Samples, holds and exports spans; shared by [`TraceLayer`](crate::TraceLayer) and
/// [`PropagateLayer`](crate::PropagateLayer). Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use garrison_trace::{Sampler, Tracer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // 100% of errors and slow requests, 10% of the rest; spans go nowhere in this example
/// let tracer = Tracer::builder()
///     .sampler(Sampler::ErrorBiased { ratio: 0.1, slow: Duration::from_secs(1) })
///     .build();
/// # let _ = tracer;
/// # }
/// ```
#[derive(Clone)]
pub struct Tracer {
    pub(crate) inner: Arc<TracerInner>,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.inner.sampler)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Tracer`].
#[must_use]
pub struct TracerBuilder {
    sampler: Sampler,
    sink: Option<Arc<dyn SpanSink>>,
    queue: usize,
    batch: usize,
    timeout: Duration,
    flush_every: Duration,
    max_pending: usize,
    max_spans_per_trace: usize,
    clock: SharedClock,
    #[cfg(feature = "otel")]
    pipeline: Option<crate::otel::Pipeline>,
}

impl fmt::Debug for TracerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracerBuilder")
            .field("sampler", &self.sampler)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Default for TracerBuilder {
    fn default() -> Self {
        Self {
            sampler: Sampler::from_env().unwrap_or_default(),
            sink: None,
            queue: 2048,
            batch: 512,
            timeout: Duration::from_secs(10),
            flush_every: Duration::from_secs(1),
            max_pending: 16_384,
            max_spans_per_trace: 128,
            clock: SharedClock::system(),
            #[cfg(feature = "otel")]
            pipeline: None,
        }
    }
}

impl TracerBuilder {
    /// The sampling policy. Default: what `OTEL_TRACES_SAMPLER` names
    /// ([`Sampler::from_env`]), else parent-based, every new trace.
    pub fn sampler(mut self, s: Sampler) -> Self {
        self.sampler = s;
        self
    }

    /// Where spans go. Without one, spans are sampled and then discarded (ids, propagation
    /// and logs still work).
    pub fn sink(mut self, sink: impl SpanSink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// The most spans waiting for export; beyond, new spans are dropped and counted.
    /// Default: 2048.
    pub fn queue(mut self, spans: usize) -> Self {
        self.queue = spans.max(1);
        self
    }

    /// The most spans in one export. Default: 512.
    pub fn batch(mut self, spans: usize) -> Self {
        self.batch = spans.max(1);
        self
    }

    /// How long one export may take before it is abandoned and its spans counted as
    /// dropped. Default: 10 s.
    pub fn export_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// How long a partial batch waits for more spans. Default: 1 s.
    pub fn flush_every(mut self, t: Duration) -> Self {
        self.flush_every = t;
        self
    }

    /// The most child spans held, across all requests, until their local roots end (the
    /// memory bound of tail sampling). Default: 16 384.
    pub fn max_pending(mut self, spans: usize) -> Self {
        self.max_pending = spans;
        self
    }

    /// The most child spans one request may hold. Default: 128.
    pub fn max_spans_per_trace(mut self, spans: usize) -> Self {
        self.max_spans_per_trace = spans;
        self
    }

    /// The clock that times spans (for the slow threshold). Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Records server and client spans in an OpenTelemetry SDK pipeline instead (feature
    /// `otel`): its sampler decides, its processors and exporter get every span, with its
    /// resource. The [`sampler`](Self::sampler), [`sink`](Self::sink) and queue options are
    /// then not used.
    #[cfg(feature = "otel")]
    pub fn pipeline(mut self, pipeline: crate::otel::Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// The tracer. With a sink it spawns the exporter task, so it must be called inside a
    /// tokio runtime.
    pub fn build(self) -> Tracer {
        let stats = Arc::new(Stats::default());
        let (tx, flushes) = self
            .sink
            .map(|sink| {
                let (tx, rx) = mpsc::channel(self.queue);
                let (flush_tx, flush_rx) = mpsc::channel(8);
                let exporter = Exporter {
                    sink,
                    stats: stats.clone(),
                    timeout: self.timeout,
                };
                tokio::spawn(export_loop(
                    rx,
                    flush_rx,
                    exporter,
                    self.batch,
                    self.flush_every,
                ));
                (tx, flush_tx)
            })
            .unzip();
        Tracer {
            inner: Arc::new(TracerInner {
                sampler: self.sampler,
                clock: self.clock,
                tx,
                flushes,
                stats,
                pending: AtomicUsize::new(0),
                max_pending: self.max_pending,
                max_spans_per_trace: self.max_spans_per_trace,
                #[cfg(feature = "otel")]
                pipeline: self.pipeline,
            }),
        }
    }
}

struct Exporter {
    sink: Arc<dyn SpanSink>,
    stats: Arc<Stats>,
    timeout: Duration,
}

impl Exporter {
    async fn export(&self, spans: Vec<SpanRecord>) {
        let n = spans.len() as u64;
        match tokio::time::timeout(self.timeout, self.sink.export(spans)).await {
            Ok(Ok(())) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                self.stats.count_drop(DropReason::ExportFailed, n);
                tracing::debug!(target: "garrison_trace", error = %e, spans = n, "span export failed");
            }
            Err(_) => {
                self.stats.count_drop(DropReason::ExportFailed, n);
                tracing::debug!(target: "garrison_trace", spans = n, "span export timed out");
            }
        }
    }
}

async fn export_loop(
    mut rx: mpsc::Receiver<SpanRecord>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    exporter: Exporter,
    batch: usize,
    flush_every: Duration,
) {
    let mut buf = Vec::with_capacity(batch);
    loop {
        let mut flush = None;
        tokio::select! {
            biased;
            Some(done) = flushes.recv() => flush = Some(done),
            n = rx.recv_many(&mut buf, batch) => if n == 0 {
                return; // every tracer is gone
            }
        }
        if flush.is_none() && buf.len() < batch {
            // a partial batch waits a little for company, unless someone asks for a flush
            let deadline = tokio::time::sleep(flush_every);
            tokio::pin!(deadline);
            while buf.len() < batch {
                let room = batch - buf.len();
                tokio::select! {
                    biased;
                    Some(done) = flushes.recv() => { flush = Some(done); break }
                    n = rx.recv_many(&mut buf, room) => if n == 0 { break },
                    _ = &mut deadline => break,
                }
            }
        }
        if let Some(done) = flush {
            // everything queued now goes out, in batches, before the caller hears back
            while let Ok(span) = rx.try_recv() {
                buf.push(span);
                if buf.len() == batch {
                    exporter
                        .export(std::mem::replace(&mut buf, Vec::with_capacity(batch)))
                        .await;
                }
            }
            if !buf.is_empty() {
                exporter
                    .export(std::mem::replace(&mut buf, Vec::with_capacity(batch)))
                    .await;
            }
            let _ = done.send(());
        } else {
            exporter
                .export(std::mem::replace(&mut buf, Vec::with_capacity(batch)))
                .await;
        }
    }
}

impl Stats {
    fn count_drop(&self, why: DropReason, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// The spans one recorded request holds until its server span ends.
pub(crate) struct LocalTrace {
    pub(crate) tracer: Arc<TracerInner>,
    pub(crate) trace_id: TraceId,
    pub(crate) start: Start,
    children: Mutex<Vec<SpanRecord>>,
}

impl fmt::Debug for LocalTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTrace")
            .field("trace_id", &self.trace_id)
            .finish_non_exhaustive()
    }
}

impl LocalTrace {
    /// Holds a finished child span (a client call) until the root ends.
    pub(crate) fn add(&self, span: SpanRecord) {
        let t = &self.tracer;
        let mut children = self.children.lock();
        if children.len() >= t.max_spans_per_trace {
            t.stats.count_drop(DropReason::TraceTooLarge, 1);
            return;
        }
        if t.pending.fetch_add(1, Ordering::Relaxed) >= t.max_pending {
            t.pending.fetch_sub(1, Ordering::Relaxed);
            t.stats.count_drop(DropReason::PendingLimit, 1);
            return;
        }
        children.push(span);
    }

    /// The root ended: keep (export everything) or discard.
    pub(crate) fn finish(&self, root: SpanRecord, error: bool, took: Duration) {
        let t = &self.tracer;
        let children = std::mem::take(&mut *self.children.lock());
        t.pending.fetch_sub(children.len(), Ordering::Relaxed);
        let keep = match self.start {
            Start::Sample => true,
            Start::Drop => false,
            Start::Defer => t.sampler.keep(self.trace_id, error, took),
        };
        if !keep {
            t.stats.discarded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        t.stats.kept.fetch_add(1, Ordering::Relaxed);
        let Some(tx) = &t.tx else { return };
        for span in std::iter::once(root).chain(children) {
            if tx.try_send(span).is_err() {
                t.stats.count_drop(DropReason::QueueFull, 1);
            }
        }
    }
}

impl Tracer {
    /// A builder.
    pub fn builder() -> TracerBuilder {
        TracerBuilder::default()
    }

    pub(crate) fn local(&self, trace_id: TraceId, start: Start) -> Arc<LocalTrace> {
        Arc::new(LocalTrace {
            tracer: self.inner.clone(),
            trace_id,
            start,
            children: Mutex::new(Vec::new()),
        })
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.inner.stats.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far for `why`.
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.inner.stats.dropped[why as usize].load(Ordering::Relaxed)
    }

    /// Recorded traces kept and discarded by sampling so far.
    pub fn traces(&self) -> (u64, u64) {
        let s = &self.inner.stats;
        (
            s.kept.load(Ordering::Relaxed),
            s.discarded.load(Ordering::Relaxed),
        )
    }

    /// Exports every span queued now and returns once the sink has taken them (or refused
    /// them, or its export timeout passed): call it at shutdown, under a deadline of your
    /// own, so that the last requests' spans are not lost. Returns at once without a sink.
    pub async fn flush(&self) {
        let Some(flushes) = &self.inner.flushes else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if flushes.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Child spans held now, waiting for their roots to end.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// Publishes `garrison_trace_spans_exported_total`,
    /// `garrison_trace_spans_dropped_total{reason}` and
    /// `garrison_trace_traces_total{decision}` through `metrics`.
    pub fn metrics(&self, metrics: &MetricsRegistry) {
        metrics.register_collector(Arc::new(TraceCollector(self.clone())));
    }
}

struct TraceCollector(Tracer);

impl Collector for TraceCollector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let t = &self.0;
        w.family(
            "garrison_trace_spans_exported",
            MetricType::Counter,
            "Spans handed to the exporter successfully.",
        );
        w.sample_u64("garrison_trace_spans_exported", &[], t.exported());
        w.family(
            "garrison_trace_spans_dropped",
            MetricType::Counter,
            "Spans dropped rather than slowing requests or growing memory, by reason.",
        );
        for why in DropReason::ALL {
            w.sample_u64(
                "garrison_trace_spans_dropped",
                &[("reason", why.as_str())],
                t.dropped(why),
            );
        }
        let (kept, discarded) = t.traces();
        w.family(
            "garrison_trace_traces",
            MetricType::Counter,
            "Recorded traces by sampling decision.",
        );
        w.sample_u64("garrison_trace_traces", &[("decision", "kept")], kept);
        w.sample_u64(
            "garrison_trace_traces",
            &[("decision", "discarded")],
            discarded,
        );
        w.family(
            "garrison_trace_pending_spans",
            MetricType::Gauge,
            "Child spans held until their local root ends.",
        );
        w.sample_u64("garrison_trace_pending_spans", &[], t.pending() as u64);
    }
}
