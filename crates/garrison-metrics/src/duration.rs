//! A histogram of durations for collectors: the layers' own wait and check times.

use std::time::Duration;

use crate::exposition::format_float;
use crate::exposition::{write_labels, MetricWriter};
use crate::histogram::{current_shard, Histogram, HistogramSnapshot};
use crate::registry::{bounds, Bounds, BuildError};

/// Shards of a [`DurationHistogram`]: threads pick one round-robin.
const SHARDS: usize = 8;

/// A fixed-bucket histogram of durations, written by a [`Collector`](crate::Collector) with
/// [`MetricWriter::histogram`]. Observing is two relaxed atomic additions on the calling
/// thread's shard; nothing allocates.
///
/// ```
/// use std::time::Duration;
/// use garrison_metrics::{DurationHistogram, Format, MetricWriter};
///
/// let waits = DurationHistogram::new(&[0.001, 0.01, 0.1]).unwrap();
/// waits.observe(Duration::from_millis(5));
/// let mut out = String::new();
/// let mut w = MetricWriter::new(&mut out, Format::Prometheus);
/// w.histogram_family("queue_wait_seconds", "Time spent waiting in the queue.");
/// w.histogram("queue_wait_seconds", &[("queue", "mail")], &waits);
/// assert!(out.contains("queue_wait_seconds_bucket{queue=\"mail\",le=\"0.01\"} 1\n"));
/// assert!(out.contains("queue_wait_seconds_count{queue=\"mail\"} 1\n"));
/// ```
pub struct DurationHistogram {
    bounds: Bounds,
    cells: Histogram,
}

impl std::fmt::Debug for DurationHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurationHistogram")
            .field("bounds", &self.bounds.exposed)
            .finish_non_exhaustive()
    }
}

impl DurationHistogram {
    /// A histogram with these upper bounds in seconds: finite, not negative, strictly
    /// ascending, at most 64.
    pub fn new(seconds: &[f64]) -> Result<Self, BuildError> {
        let bounds = bounds("duration histogram", seconds, 1e9)?;
        let cells = Histogram::new(bounds.raw.len(), SHARDS);
        Ok(Self { bounds, cells })
    }

    /// Counts one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.cells
            .observe(&self.bounds.raw, current_shard() % SHARDS, ns);
    }

    /// A point-in-time copy (sum in seconds).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let (counts, sum) = self.cells.snapshot(&self.bounds.raw);
        HistogramSnapshot::new(
            self.bounds.exposed.to_vec(),
            counts,
            sum as f64 * self.bounds.scale,
        )
    }
}

impl MetricWriter<'_> {
    /// Starts a histogram family: its `# HELP` and `# TYPE` lines.
    pub fn histogram_family(&mut self, name: &str, help: &str) {
        self.kind = None;
        self.header(name, "", "histogram", help);
    }

    /// One histogram series: its `_bucket` lines (cumulative, `+Inf` last), `_sum` and
    /// `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &DurationHistogram) {
        let (counts, sum) = h.cells.snapshot(&h.bounds.raw);
        let le = &h.bounds.le;
        let out = self.out();
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            out.push_str(name);
            out.push_str("_bucket");
            write_labels(out, labels, Some(&le[i]));
            out.push(' ');
            out.push_str(itoa::Buffer::new().format(cumulative));
            out.push('\n');
        }
        out.push_str(name);
        out.push_str("_sum");
        write_labels(out, labels, None);
        out.push(' ');
        out.push_str(&format_float(sum as f64 * h.bounds.scale));
        out.push('\n');
        out.push_str(name);
        out.push_str("_count");
        write_labels(out, labels, None);
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(cumulative));
        out.push('\n');
    }
}
