//! `GarrisonRecorder`: the `metrics` crate's `counter!`, `gauge!` and `histogram!` on Garrison's
//! `/metrics` (feature `metrics`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use parking_lot::RwLock;

use crate::exposition::{Collector, MetricType, MetricWriter};
use crate::{BuildError, DurationHistogram, MetricsRegistry};

/// A `metrics` 0.24 [`Recorder`] whose counters, gauges and histograms appear on the
/// registry's `/metrics` beside Garrison's own families (Prometheus text and OpenMetrics).
///
/// - Names are made Prometheus-safe (`http.requests` becomes `http_requests`); a counter's
///   `_total` suffix is the exposition's.
/// - Histograms use fixed buckets ([`buckets`](GarrisonRecorderBuilder::buckets), by default
///   the registry's duration buckets in seconds); negative values count as 0.
/// - The number of series (name and labels) is capped like the registry's: beyond
///   [`max_series`](GarrisonRecorderBuilder::max_series), new series are not recorded and
///   are counted in `garrison_metrics_recorder_series_dropped_total`.
///
/// ```
/// use garrison_metrics::{Format, GarrisonRecorder, MetricsRegistry};
///
/// let registry = MetricsRegistry::new();
/// let recorder = GarrisonRecorder::new(&registry);
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("orders_placed", "channel" => "web").increment(2);
///     metrics::histogram!("checkout.seconds").record(0.2);
/// });
/// let text = registry.render(Format::Prometheus);
/// assert!(text.contains("orders_placed_total{channel=\"web\"} 2\n"));
/// assert!(text.contains("checkout_seconds_count 1\n"));
/// // in a service: metrics::set_global_recorder(recorder)
/// ```
#[derive(Clone, Debug)]
pub struct GarrisonRecorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    buckets: Vec<f64>,
    max_series: usize,
    series: RwLock<HashMap<Key, RecorderSeries>>,
    help: RwLock<HashMap<String, (Option<Unit>, String)>>,
    dropped: AtomicU64,
}

#[derive(Clone, Debug)]
enum RecorderSeries {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Observed>),
}

#[derive(Debug)]
struct Observed(DurationHistogram);

impl HistogramFn for Observed {
    fn record(&self, value: f64) {
        let v = if value.is_finite() && value > 0.0 {
            value.min(u64::MAX as f64 / 1e9)
        } else {
            0.0
        };
        self.0.observe(Duration::from_secs_f64(v));
    }
}

/// Builds a [`GarrisonRecorder`].
#[derive(Debug)]
#[must_use]
pub struct GarrisonRecorderBuilder {
    buckets: Option<Vec<f64>>,
    max_series: usize,
}

impl GarrisonRecorderBuilder {
    /// The upper bounds of every histogram's buckets. Default: the registry's duration
    /// buckets.
    pub fn buckets(mut self, bounds: &[f64]) -> Self {
        self.buckets = Some(bounds.to_vec());
        self
    }

    /// The most series recorded. Default: 10 000.
    pub fn max_series(mut self, max: usize) -> Self {
        self.max_series = max;
        self
    }

    /// The recorder, registered as a collector of `registry`.
    pub fn build(self, registry: &MetricsRegistry) -> Result<GarrisonRecorder, BuildError> {
        let buckets = self
            .buckets
            .unwrap_or_else(|| registry.shared.duration.exposed.to_vec());
        // the buckets are checked once, here, rather than at the first histogram
        DurationHistogram::new(&buckets)?;
        let recorder = GarrisonRecorder {
            inner: Arc::new(Inner {
                buckets,
                max_series: self.max_series,
                series: RwLock::default(),
                help: RwLock::default(),
                dropped: AtomicU64::new(0),
            }),
        };
        registry.register_collector(Arc::new(recorder.clone()));
        Ok(recorder)
    }
}

impl GarrisonRecorder {
    /// A recorder with the registry's duration buckets, registered as a collector of
    /// `registry`.
    pub fn new(registry: &MetricsRegistry) -> Self {
        Self::builder()
            .build(registry)
            .expect("the registry's own buckets are valid")
    }

    /// A builder.
    pub fn builder() -> GarrisonRecorderBuilder {
        GarrisonRecorderBuilder {
            buckets: None,
            max_series: 10_000,
        }
    }

    /// RecorderSeries not recorded because the cap was reached.
    pub fn series_dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn register(&self, key: &Key, make: impl FnOnce() -> RecorderSeries) -> Option<RecorderSeries> {
        if let Some(s) = self.inner.series.read().get(key) {
            return Some(s.clone());
        }
        let mut series = self.inner.series.write();
        if let Some(s) = series.get(key) {
            return Some(s.clone());
        }
        if series.len() >= self.inner.max_series {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let s = make();
        series.insert(key.clone(), s.clone());
        Some(s)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner
            .help
            .write()
            .insert(key.as_str().to_owned(), (unit, description.into_owned()));
    }
}

impl Recorder for GarrisonRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.register(key, || RecorderSeries::Counter(Arc::default())) {
            Some(RecorderSeries::Counter(c)) => Counter::from_arc(c),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.register(key, || RecorderSeries::Gauge(Arc::default())) {
            Some(RecorderSeries::Gauge(g)) => Gauge::from_arc(g),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let buckets = &self.inner.buckets;
        let made = || {
            RecorderSeries::Histogram(Arc::new(Observed(
                DurationHistogram::new(buckets).expect("checked at build"),
            )))
        };
        match self.register(key, made) {
            Some(RecorderSeries::Histogram(h)) => Histogram::from_arc(h),
            _ => Histogram::noop(),
        }
    }
}

/// `name` as a Prometheus metric name: letters, digits, `_` and `:`, not starting with a
/// digit; a counter's `_total` is left to the exposition.
fn prometheus_name(name: &str, counter: bool) -> String {
    let name = if counter {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    };
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn label_name(name: &str) -> String {
    let mut out = prometheus_name(name, false).replace(':', "_");
    if out.starts_with("__") {
        // reserved for Prometheus itself
        out.replace_range(..2, "u_");
    }
    out
}

impl Collector for GarrisonRecorder {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        // families by name, each with its series; a name used with two kinds keeps the first
        let series = self.inner.series.read().clone();
        let help = self.inner.help.read().clone();
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for (key, s) in series {
            let kind = match s {
                RecorderSeries::Counter(_) => Kind::Counter,
                RecorderSeries::Gauge(_) => Kind::Gauge,
                RecorderSeries::Histogram(_) => Kind::Histogram,
            };
            let name = prometheus_name(key.name(), kind == Kind::Counter);
            let labels = key
                .labels()
                .map(|l| (label_name(l.key()), l.value().to_owned()))
                .collect();
            let family = families.entry(name).or_insert_with(|| (kind, Vec::new()));
            if family.0 == kind {
                family.1.push((labels, s));
            }
        }
        for (name, (kind, mut members)) in families {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let text = help
                .iter()
                .find(|(k, _)| prometheus_name(k, kind == Kind::Counter) == name)
                .map_or_else(|| name.clone(), |(_, (_, h))| h.clone());
            match kind {
                Kind::Counter => w.family(&name, MetricType::Counter, &text),
                Kind::Gauge => w.family(&name, MetricType::Gauge, &text),
                Kind::Histogram => w.histogram_family(&name, &text),
            }
            for (labels, s) in members {
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match s {
                    RecorderSeries::Counter(c) => {
                        w.sample_u64(&name, &labels, c.load(Ordering::Relaxed))
                    }
                    RecorderSeries::Gauge(g) => {
                        w.sample_f64(&name, &labels, f64::from_bits(g.load(Ordering::Relaxed)))
                    }
                    RecorderSeries::Histogram(h) => w.histogram(&name, &labels, &h.0),
                }
            }
        }
        w.family(
            "garrison_metrics_recorder_series_dropped",
            MetricType::Counter,
            "RecorderSeries of the metrics crate not recorded because the recorder's cap was reached.",
        );
        w.sample_u64(
            "garrison_metrics_recorder_series_dropped",
            &[],
            self.series_dropped(),
        );
    }
}

/// One family at a scrape: its kind, and its series with their labels.
type Family = (Kind, Vec<(Vec<(String, String)>, RecorderSeries)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_for_prometheus() {
        assert_eq!(prometheus_name("http.requests", false), "http_requests");
        assert_eq!(prometheus_name("jobs_total", true), "jobs");
        assert_eq!(prometheus_name("9lives", false), "_9lives");
        assert_eq!(prometheus_name("", false), "_");
        assert_eq!(label_name("__name__"), "u_name__");
        assert_eq!(label_name("a:b"), "a_b");
    }
}
