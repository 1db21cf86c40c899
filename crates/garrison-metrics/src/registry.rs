//! The registry: series storage, recording, snapshots.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use garrison_core::{ErrorType, FailureClassifier, MethodLabel, SharedClock, TraceId};
use parking_lot::{Mutex, RwLock};

use crate::exposition::{format_float, Collector};
use crate::histogram::{current_shard, Histogram, HistogramSnapshot};
use crate::table::{IntTable, StrTable};

/// The bucket bounds (seconds) that OpenTelemetry recommends for
/// `http.server.request.duration`.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The default bucket bounds (bytes) for request and response body sizes.
pub const DEFAULT_SIZE_BUCKETS: &[f64] = &[
    0.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

/// The default cap on HTTP series (one series per method × route × status × error type).
pub const DEFAULT_MAX_SERIES: usize = 2_000;

/// One row of active-request gauges per shard: 10 methods, padded to 128 bytes.
const ACTIVE_STRIDE: usize = 16;

/// The registry of Garrison's HTTP metrics, and of any [`Collector`] you add.
///
/// Cheap to clone (one `Arc`); every clone is the same registry. Hand one to
/// [`MetricsLayer::new`](crate::MetricsLayer::new) and serve it with
/// [`exporter`](Self::exporter).
///
/// # Memory
///
/// Series are created on first use and never removed while the registry lives; their number is
/// capped by [`max_series`](MetricsRegistryBuilder::max_series), and an observation that would
/// need a new series beyond the cap is dropped and counted in
/// `garrison_metrics_series_dropped_total`. Each series costs about
/// `shards × 512 bytes` (three sharded histograms), plus 1 KiB once it has an exemplar.
#[derive(Clone)]
pub struct MetricsRegistry {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("series", &self.series_count())
            .field("max_series", &self.shared.max_series)
            .field("shards", &self.shared.shards)
            .finish_non_exhaustive()
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`MetricsRegistry`] with non-default options.
#[derive(Debug, Clone)]
#[must_use]
pub struct MetricsRegistryBuilder {
    duration_buckets: Vec<f64>,
    request_size_buckets: Vec<f64>,
    response_size_buckets: Vec<f64>,
    max_series: usize,
    shards: Option<usize>,
    clock: SharedClock,
    classifier: FailureClassifier,
    exemplars: bool,
    process_metrics: bool,
    runtime_metrics: bool,
}

/// An option given to [`MetricsRegistryBuilder`] was invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    option: &'static str,
    reason: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics.{}: {}", self.option, self.reason)
    }
}

impl std::error::Error for BuildError {}

impl Default for MetricsRegistryBuilder {
    fn default() -> Self {
        Self {
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            request_size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            response_size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            max_series: DEFAULT_MAX_SERIES,
            shards: None,
            clock: SharedClock::system(),
            classifier: FailureClassifier::default(),
            exemplars: true,
            process_metrics: true,
            runtime_metrics: true,
        }
    }
}

impl MetricsRegistryBuilder {
    /// Bucket upper bounds for `http_server_request_duration_seconds`, in seconds, ascending
    /// (default: [`DEFAULT_DURATION_BUCKETS`]).
    pub fn duration_buckets(mut self, seconds: &[f64]) -> Self {
        self.duration_buckets = seconds.to_vec();
        self
    }

    /// Bucket upper bounds for `http_server_request_body_size_bytes` (default:
    /// [`DEFAULT_SIZE_BUCKETS`]).
    pub fn request_size_buckets(mut self, bytes: &[f64]) -> Self {
        self.request_size_buckets = bytes.to_vec();
        self
    }

    /// Bucket upper bounds for `http_server_response_body_size_bytes` (default:
    /// [`DEFAULT_SIZE_BUCKETS`]).
    pub fn response_size_buckets(mut self, bytes: &[f64]) -> Self {
        self.response_size_buckets = bytes.to_vec();
        self
    }

    /// The cap on HTTP series (default [`DEFAULT_MAX_SERIES`]).
    pub fn max_series(mut self, max: usize) -> Self {
        self.max_series = max;
        self
    }

    /// How many shards each histogram keeps (default: the number of CPUs, rounded up to a
    /// power of two, at most 16). One shard is the least memory; more shards let more threads
    /// record into one route without sharing cache lines.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The clock durations are measured with (default: the system clock). Tests pass
    /// `SharedClock::new(TokioClock)` to use tokio's paused clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// What counts as a failed request, for the `error_type` label (default: `5xx`).
    pub fn classifier(mut self, classifier: FailureClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Whether to keep exemplars (trace ids of sampled traces) on duration buckets
    /// (default: on).
    pub fn exemplars(mut self, on: bool) -> Self {
        self.exemplars = on;
        self
    }

    /// Whether to expose `process_*` metrics (default: on; Linux only).
    pub fn process_metrics(mut self, on: bool) -> Self {
        self.process_metrics = on;
        self
    }

    /// Whether to expose `tokio_runtime_*` metrics of the runtime that serves the scrape
    /// (default: on): workers, tasks, the global queue, and the runtime's lag
    /// (`tokio_runtime_scheduling_delay_seconds`, how late a probe task that wakes every
    /// 250 ms woke last, measured from the first scrape on).
    pub fn runtime_metrics(mut self, on: bool) -> Self {
        self.runtime_metrics = on;
        self
    }

    /// Builds the registry, or says which option is wrong and why.
    pub fn try_build(self) -> Result<MetricsRegistry, BuildError> {
        let duration = bounds("duration_buckets", &self.duration_buckets, 1e9)?;
        let req = bounds("request_size_buckets", &self.request_size_buckets, 1.0)?;
        let resp = bounds("response_size_buckets", &self.response_size_buckets, 1.0)?;
        if self.max_series == 0 || self.max_series > u32::MAX as usize / 2 {
            return Err(BuildError {
                option: "max_series",
                reason: "must be between 1 and 2147483647".into(),
            });
        }
        let shards = match self.shards {
            Some(0) | Some(257..) => {
                return Err(BuildError {
                    option: "shards",
                    reason: "must be between 1 and 256".into(),
                })
            }
            Some(n) => n.next_power_of_two(),
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .next_power_of_two()
                .min(16),
        };
        Ok(MetricsRegistry {
            shared: Arc::new(Shared {
                clock: self.clock,
                classifier: self.classifier,
                duration,
                req,
                resp,
                shards,
                max_series: self.max_series,
                exemplars: self.exemplars,
                process_metrics: self.process_metrics,
                runtime_metrics: self.runtime_metrics,
                lag: Arc::default(),
                routes: StrTable::new(self.max_series),
                route_names: boxcar::Vec::new(),
                index: IntTable::new(self.max_series),
                series: boxcar::Vec::new(),
                insert_lock: Mutex::new(()),
                active: (0..shards * ACTIVE_STRIDE)
                    .map(|_| AtomicI64::new(0))
                    .collect(),
                active_seen: AtomicU16::new(0),
                dropped: AtomicU64::new(0),
                collectors: RwLock::new(Vec::new()),
                panics: Mutex::default(),
            }),
        })
    }

    /// Builds the registry.
    ///
    /// # Panics
    ///
    /// When an option is invalid; [`try_build`](Self::try_build) returns the error instead.
    pub fn build(self) -> MetricsRegistry {
        match self.try_build() {
            Ok(r) => r,
            Err(e) => panic!("invalid metrics configuration: {e}"),
        }
    }
}

pub(crate) struct Bounds {
    /// Integer bounds in the stored unit (nanoseconds, bytes).
    pub(crate) raw: Box<[u64]>,
    /// The same bounds in the exposed unit (seconds, bytes).
    pub(crate) exposed: Box<[f64]>,
    /// Pre-formatted `le` label values, `+Inf` last.
    pub(crate) le: Box<[Box<str>]>,
    /// Exposed unit per stored unit.
    pub(crate) scale: f64,
}

pub(crate) fn bounds(
    option: &'static str,
    values: &[f64],
    per_unit: f64,
) -> Result<Bounds, BuildError> {
    let err = |reason: &str| BuildError {
        option,
        reason: reason.to_owned(),
    };
    if values.is_empty() {
        return Err(err("needs at least one bucket bound"));
    }
    if values.len() > 64 {
        return Err(err("at most 64 bucket bounds"));
    }
    let mut raw = Vec::with_capacity(values.len());
    for &v in values {
        if !v.is_finite() || v < 0.0 {
            return Err(err("bounds must be finite and not negative"));
        }
        let r = (v * per_unit).round();
        if r >= u64::MAX as f64 {
            return Err(err("bound too large"));
        }
        raw.push(r as u64);
    }
    if raw.windows(2).any(|w| w[0] >= w[1]) {
        return Err(err("bounds must be strictly ascending"));
    }
    let mut le: Vec<Box<str>> = values.iter().map(|&v| format_float(v).into()).collect();
    le.push("+Inf".into());
    Ok(Bounds {
        raw: raw.into(),
        exposed: values.into(),
        le: le.into(),
        scale: 1.0 / per_unit,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) route: u32,
    pub(crate) method: MethodLabel,
    pub(crate) error: ErrorType,
    pub(crate) status: u16,
}

impl SeriesKey {
    #[inline]
    fn pack(self) -> u64 {
        (u64::from(self.route) << 32)
            | ((self.method as u64) << 24)
            | ((self.error as u64) << 16)
            | u64::from(self.status)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Exemplar {
    pub(crate) trace_id: TraceId,
    pub(crate) value: u64,
    pub(crate) unix_millis: u64,
}

pub(crate) struct Series {
    pub(crate) key: SeriesKey,
    pub(crate) duration: Histogram,
    pub(crate) req_size: Histogram,
    pub(crate) resp_size: Histogram,
    pub(crate) exemplars: OnceLock<Box<[Mutex<Option<Exemplar>>]>>,
}

/// What a finished request reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub(crate) route: Option<u32>,
    pub(crate) method: MethodLabel,
    pub(crate) status: u16,
    pub(crate) error: ErrorType,
    pub(crate) duration_nanos: u64,
    pub(crate) request_size: Option<u64>,
    pub(crate) response_size: u64,
    pub(crate) trace: Option<TraceId>,
}

pub(crate) struct Shared {
    pub(crate) clock: SharedClock,
    pub(crate) classifier: FailureClassifier,
    pub(crate) duration: Bounds,
    pub(crate) req: Bounds,
    pub(crate) resp: Bounds,
    shards: usize,
    max_series: usize,
    pub(crate) exemplars: bool,
    pub(crate) process_metrics: bool,
    pub(crate) runtime_metrics: bool,
    /// The runtime's scheduling delay, measured by a probe task (runtime metrics on).
    pub(crate) lag: Arc<crate::process::LagProbe>,
    routes: StrTable,
    pub(crate) route_names: boxcar::Vec<Box<str>>,
    index: IntTable,
    pub(crate) series: boxcar::Vec<Series>,
    insert_lock: Mutex<()>,
    active: Box<[AtomicI64]>,
    active_seen: AtomicU16,
    pub(crate) dropped: AtomicU64,
    pub(crate) collectors: RwLock<Vec<Arc<dyn Collector>>>,
    /// `garrison_panics_total` by route and panic location, bounded (see `count_panic`).
    pub(crate) panics: Mutex<std::collections::BTreeMap<(u32, String), u64>>,
}

/// The most distinct panic locations counted; further ones count as `_other`.
const MAX_PANIC_LOCATIONS: usize = 256;

impl Shared {
    #[inline]
    fn shard(&self) -> usize {
        current_shard() & (self.shards - 1)
    }

    /// The id of a route label, interning it on first sight. `None` once the series cap is
    /// reached (such a request is counted as dropped when it finishes).
    #[inline]
    pub(crate) fn route_id(&self, route: &str) -> Option<u32> {
        if let Some(id) = self.routes.get(route, |id| self.route_name(id)) {
            return Some(id);
        }
        self.intern_route(route)
    }

    #[cold]
    fn intern_route(&self, route: &str) -> Option<u32> {
        let _g = self.insert_lock.lock();
        if let Some(id) = self.routes.get(route, |id| self.route_name(id)) {
            return Some(id);
        }
        if self.route_names.count() >= self.max_series {
            return None;
        }
        let id = u32::try_from(self.route_names.push(route.into())).ok()?;
        self.routes.insert(route, id);
        Some(id)
    }

    #[inline]
    fn series_id(&self, key: SeriesKey) -> Option<u32> {
        if let Some(id) = self.index.get(key.pack()) {
            return Some(id);
        }
        self.insert_series(key)
    }

    #[cold]
    fn insert_series(&self, key: SeriesKey) -> Option<u32> {
        let _g = self.insert_lock.lock();
        if let Some(id) = self.index.get(key.pack()) {
            return Some(id);
        }
        if self.series.count() >= self.max_series {
            return None;
        }
        let id = self.series.push(Series {
            key,
            duration: Histogram::new(self.duration.raw.len(), self.shards),
            req_size: Histogram::new(self.req.raw.len(), self.shards),
            resp_size: Histogram::new(self.resp.raw.len(), self.shards),
            exemplars: OnceLock::new(),
        });
        let id = u32::try_from(id).ok()?;
        self.index.insert(key.pack(), id);
        Some(id)
    }

    #[inline]
    pub(crate) fn request_started(&self, method: MethodLabel) {
        let bit = 1u16 << method.index();
        if self.active_seen.load(Ordering::Relaxed) & bit == 0 {
            self.active_seen.fetch_or(bit, Ordering::Relaxed);
        }
        self.active[self.shard() * ACTIVE_STRIDE + method.index()].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn record(&self, obs: &Observation) {
        let shard = self.shard();
        self.active[shard * ACTIVE_STRIDE + obs.method.index()].fetch_sub(1, Ordering::Relaxed);
        let series = obs.route.and_then(|route| {
            self.series_id(SeriesKey {
                route,
                method: obs.method,
                error: obs.error,
                status: obs.status,
            })
        });
        let Some(id) = series else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(s) = self.series.get(id as usize) else {
            return;
        };
        let nanos = obs.duration_nanos;
        let bucket = s.duration.observe(&self.duration.raw, shard, nanos);
        if let Some(size) = obs.request_size {
            s.req_size.observe(&self.req.raw, shard, size);
        }
        s.resp_size
            .observe(&self.resp.raw, shard, obs.response_size);
        if let Some(trace_id) = obs.trace {
            self.store_exemplar(s, bucket, trace_id, nanos);
        }
    }

    #[cold]
    fn store_exemplar(&self, s: &Series, bucket: usize, trace_id: TraceId, value: u64) {
        let slots = s.exemplars.get_or_init(|| {
            (0..self.duration.le.len())
                .map(|_| Mutex::new(None))
                .collect()
        });
        // Best effort: a bucket whose exemplar is being written or read keeps the other one.
        if let Some(mut slot) = slots[bucket].try_lock() {
            let unix_millis = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            *slot = Some(Exemplar {
                trace_id,
                value,
                unix_millis,
            });
        }
    }

    pub(crate) fn active(&self, method: MethodLabel) -> i64 {
        self.active
            .chunks_exact(ACTIVE_STRIDE)
            .map(|row| row[method.index()].load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn active_seen(&self) -> impl Iterator<Item = MethodLabel> + '_ {
        let seen = self.active_seen.load(Ordering::Relaxed);
        MethodLabel::ALL
            .into_iter()
            .filter(move |m| seen & (1 << m.index()) != 0)
    }

    /// Counts a panic of the service on route `route` at `location` (`file:line`).
    #[cold]
    pub(crate) fn count_panic(&self, route: Option<u32>, location: Option<&str>) {
        let route = route.unwrap_or(u32::MAX);
        let mut panics = self.panics.lock();
        let location = location.unwrap_or("unknown");
        let known = panics.keys().any(|(_, l)| l == location);
        let location = if known || panics.len() < MAX_PANIC_LOCATIONS {
            location
        } else {
            "_other"
        };
        *panics.entry((route, location.to_owned())).or_insert(0) += 1;
    }

    pub(crate) fn route_name(&self, id: u32) -> &str {
        self.route_names.get(id as usize).map_or("", |s| s)
    }

    pub(crate) fn series_len(&self) -> usize {
        self.series.count()
    }
}

/// A point-in-time copy of one HTTP series, for tests, health checks and dashboards built in
/// code.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    /// `http_request_method`.
    pub method: MethodLabel,
    /// `http_route`.
    pub route: String,
    /// `http_response_status_code`; `None` when no response was produced (an error from the
    /// service, or a request cancelled before its response).
    pub status: Option<u16>,
    /// `error_type`: `None` for success; the status code for a status the classifier counts
    /// as failure; `cancelled`, `service_error`, `body_error` or `timeout` otherwise.
    pub error_type: Option<String>,
    /// `http_server_request_duration_seconds`, in seconds.
    pub duration: HistogramSnapshot,
    /// `http_server_request_body_size_bytes` (only requests whose size was known).
    pub request_size: HistogramSnapshot,
    /// `http_server_response_body_size_bytes` (bytes actually sent).
    pub response_size: HistogramSnapshot,
}

pub(crate) fn error_label(key: &SeriesKey, buf: &mut itoa::Buffer) -> Option<String> {
    match key.error {
        ErrorType::None => None,
        ErrorType::Status => Some(buf.format(key.status).to_owned()),
        other => Some(other.as_str().to_owned()),
    }
}

pub(crate) fn snapshot_histogram(h: &Histogram, b: &Bounds) -> HistogramSnapshot {
    let (counts, sum) = h.snapshot(&b.raw);
    HistogramSnapshot::new(b.exposed.to_vec(), counts, sum as f64 * b.scale)
}

impl MetricsRegistry {
    /// A registry with the default options.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The clock that times requests.
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// A builder for a registry with other options.
    pub fn builder() -> MetricsRegistryBuilder {
        MetricsRegistryBuilder::default()
    }

    /// Adds a collector whose families are rendered after Garrison's own. Other Garrison
    /// layers (rate limiter, breaker, health) register theirs here.
    pub fn register_collector(&self, collector: Arc<dyn Collector>) {
        self.shared.collectors.write().push(collector);
    }

    /// A copy of every HTTP series.
    pub fn snapshot(&self) -> Vec<SeriesSnapshot> {
        let sh = &self.shared;
        let mut buf = itoa::Buffer::new();
        sh.series
            .iter()
            .map(|(_, s)| SeriesSnapshot {
                method: s.key.method,
                route: sh.route_name(s.key.route).to_owned(),
                status: (s.key.status != 0).then_some(s.key.status),
                error_type: error_label(&s.key, &mut buf),
                duration: snapshot_histogram(&s.duration, &sh.duration),
                request_size: snapshot_histogram(&s.req_size, &sh.req),
                response_size: snapshot_histogram(&s.resp_size, &sh.resp),
            })
            .collect()
    }

    /// The number of HTTP series.
    pub fn series_count(&self) -> usize {
        self.shared.series_len()
    }

    /// How many observations were dropped because the series cap was reached.
    pub fn series_dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Requests of `method` in flight now.
    pub fn active_requests(&self, method: MethodLabel) -> i64 {
        self.shared.active(method)
    }

    /// A tower service that answers scrapes with [`render`](Self::render), for axum's
    /// `Router::route_service("/metrics", ...)` or a hyper server.
    pub fn exporter(&self) -> crate::MetricsExporter {
        crate::MetricsExporter::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_name_the_option() {
        let e = MetricsRegistry::builder()
            .duration_buckets(&[0.1, 0.05])
            .try_build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "metrics.duration_buckets: bounds must be strictly ascending"
        );
        let e = MetricsRegistry::builder()
            .request_size_buckets(&[f64::NAN])
            .try_build()
            .unwrap_err();
        assert!(e.to_string().starts_with("metrics.request_size_buckets:"));
        let e = MetricsRegistry::builder()
            .max_series(0)
            .try_build()
            .unwrap_err();
        assert!(e.to_string().starts_with("metrics.max_series:"));
        let e = MetricsRegistry::builder()
            .shards(0)
            .try_build()
            .unwrap_err();
        assert!(e.to_string().starts_with("metrics.shards:"));
    }

    #[test]
    fn series_keys_pack_uniquely() {
        let a = SeriesKey {
            route: 1,
            method: MethodLabel::Get,
            error: ErrorType::None,
            status: 200,
        };
        let b = SeriesKey { route: 2, ..a };
        let c = SeriesKey {
            method: MethodLabel::Post,
            ..a
        };
        let d = SeriesKey {
            error: ErrorType::Cancelled,
            ..a
        };
        let e = SeriesKey { status: 201, ..a };
        let all = [a, b, c, d, e].map(SeriesKey::pack);
        for i in 0..all.len() {
            for j in 0..i {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
