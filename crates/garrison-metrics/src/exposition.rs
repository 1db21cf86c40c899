//! Prometheus text and OpenMetrics exposition.

use std::fmt::Write as _;

use http::HeaderValue;

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (no exemplars).
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text, with exemplars on histogram buckets.
    OpenMetrics,
}

impl Format {
    /// The format a scraper asks for in its `Accept` header: OpenMetrics when it lists
    /// `application/openmetrics-text` (as Prometheus does), the Prometheus text format
    /// otherwise.
    pub fn from_accept(accept: Option<&HeaderValue>) -> Self {
        match accept.and_then(|v| v.to_str().ok()) {
            Some(a) if accepts_openmetrics(a) => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';');
        let media = params.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            return false;
        }
        // `q=0` means "not acceptable".
        !params.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        })
    })
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing count; its sample is named `<name>_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

/// Something that writes metric families at scrape time: the other Garrison layers (rate
/// limiter, breaker, health) and your own code implement it and
/// [`register`](crate::MetricsRegistry::register_collector) it.
pub trait Collector: Send + Sync + 'static {
    /// Writes this collector's families.
    fn collect(&self, w: &mut MetricWriter<'_>);
}

/// Writes metric families in one [`Format`], escaping label values and help texts.
///
/// ```
/// use garrison_metrics::{Format, MetricType, MetricWriter};
///
/// let mut out = String::new();
/// let mut w = MetricWriter::new(&mut out, Format::Prometheus);
/// w.family("jobs_done", MetricType::Counter, "Jobs finished.");
/// w.sample_u64("jobs_done", &[("queue", "mail")], 3);
/// assert!(out.contains("# TYPE jobs_done_total counter\njobs_done_total{queue=\"mail\"} 3\n"));
/// ```
#[derive(Debug)]
pub struct MetricWriter<'a> {
    out: &'a mut String,
    format: Format,
    pub(crate) kind: Option<MetricType>,
}

impl<'a> MetricWriter<'a> {
    /// A writer that appends to `out`.
    pub fn new(out: &'a mut String, format: Format) -> Self {
        Self {
            out,
            format,
            kind: None,
        }
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. `name` is the family name without
    /// `_total`; samples of a counter family get the suffix.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let (ty, suffix) = match (kind, self.format) {
            (MetricType::Counter, Format::Prometheus) => ("counter", "_total"),
            (MetricType::Counter, Format::OpenMetrics) => ("counter", ""),
            (MetricType::Gauge, _) => ("gauge", ""),
        };
        self.kind = Some(kind);
        self.header(name, suffix, ty, help);
    }

    pub(crate) fn header(&mut self, name: &str, suffix: &str, ty: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name}{suffix} ");
        escape_help(self.out, help);
        let _ = writeln!(self.out, "\n# TYPE {name}{suffix} {ty}");
    }

    fn sample_start(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if self.kind == Some(MetricType::Counter) {
            self.out.push_str("_total");
        }
        write_labels(self.out, labels, None);
        self.out.push(' ');
    }

    /// One sample with an integer value.
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.sample_start(name, labels);
        self.out.push_str(itoa::Buffer::new().format(value));
        self.out.push('\n');
    }

    /// One sample with a signed integer value.
    pub fn sample_i64(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.sample_start(name, labels);
        self.out.push_str(itoa::Buffer::new().format(value));
        self.out.push('\n');
    }

    /// One sample with a float value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.sample_start(name, labels);
        self.out.push_str(&format_float(value));
        self.out.push('\n');
    }

    pub(crate) fn out(&mut self) -> &mut String {
        self.out
    }
}

fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

pub(crate) fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    out.push('}');
}

/// Formats a float as Prometheus clients do: shortest round-trip form, `1` rather than `1.0`.
pub(crate) fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v.is_nan() {
        return "NaN".to_owned();
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v);
    s.strip_suffix(".0").unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let hv = |s: &'static str| HeaderValue::from_static(s);
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(&hv(prom))), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some(&hv("text/plain"))),
            Format::Prometheus
        );
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(&hv("application/openmetrics-text;q=0"))),
            Format::Prometheus
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        write_labels(&mut out, &[("a", "x\"y\\z\nw")], Some("+Inf"));
        assert_eq!(out, r#"{a="x\"y\\z\nw",le="+Inf"}"#);
    }

    #[test]
    fn counters_are_named_per_format() {
        let mut out = String::new();
        let mut w = MetricWriter::new(&mut out, Format::OpenMetrics);
        w.family("x", MetricType::Counter, "help\nline");
        w.sample_u64("x", &[], 1);
        assert_eq!(out, "# HELP x help\\nline\n# TYPE x counter\nx_total 1\n");
    }

    #[test]
    fn floats_format_like_prometheus_clients() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(2.5), "2.5");
        assert_eq!(format_float(100_000_000.0), "100000000");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
    }
}
