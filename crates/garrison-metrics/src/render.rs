//! The registry's own families in the exposition formats, followed by its collectors'.

use std::fmt::Write as _;

use crate::exposition::{format_float, write_labels, Collector, Format, MetricType, MetricWriter};
use crate::registry::{error_label, Bounds, Shared};
use crate::MetricsRegistry;

impl MetricsRegistry {
    /// Renders every metric in `format`.
    pub fn render(&self, format: Format) -> String {
        render(&self.shared, format)
    }

    /// Writes the families of this registry into `w` (used to nest registries).
    pub fn write_to(&self, w: &mut MetricWriter<'_>) {
        write_families(&self.shared, w);
    }
}

fn render(shared: &Shared, format: Format) -> String {
    let mut out = String::with_capacity(4096 + shared.series_len() * 3 * 1024);
    let mut w = MetricWriter::new(&mut out, format);
    write_families(shared, &mut w);
    let collectors = shared.collectors.read().clone();
    for c in collectors {
        c.collect(&mut w);
    }
    if shared.process_metrics {
        crate::process::collect_process(&mut w);
    }
    if shared.runtime_metrics {
        crate::process::collect_runtime(&mut w, &shared.lag);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[derive(Clone, Copy)]
enum Which {
    Duration,
    Request,
    Response,
}

fn write_families(sh: &Shared, w: &mut MetricWriter<'_>) {
    write_histogram(
        sh,
        w,
        Which::Duration,
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests, until the response body ended.",
    );
    w.family(
        "http_server_active_requests",
        MetricType::Gauge,
        "Number of active HTTP server requests.",
    );
    for m in sh.active_seen() {
        w.sample_i64(
            "http_server_active_requests",
            &[("http_request_method", m.as_str())],
            sh.active(m),
        );
    }
    write_histogram(
        sh,
        w,
        Which::Request,
        "http_server_request_body_size_bytes",
        "Size of HTTP server request bodies (from Content-Length).",
    );
    write_histogram(
        sh,
        w,
        Which::Response,
        "http_server_response_body_size_bytes",
        "Size of HTTP server response bodies, as sent.",
    );
    w.family(
        "garrison_metrics_series",
        MetricType::Gauge,
        "Number of HTTP label sets (series) held by the registry.",
    );
    w.sample_u64("garrison_metrics_series", &[], sh.series_len() as u64);
    w.family(
        "garrison_metrics_series_dropped",
        MetricType::Counter,
        "Observations dropped because the cap on HTTP series was reached.",
    );
    w.sample_u64(
        "garrison_metrics_series_dropped",
        &[],
        sh.dropped.load(std::sync::atomic::Ordering::Relaxed),
    );
    w.family(
        "garrison_panics",
        MetricType::Counter,
        "Panics of the service behind the stack, answered 500, by route and location.",
    );
    for ((route, location), n) in sh.panics.lock().iter() {
        let route = if *route == u32::MAX {
            garrison_core::UNMATCHED
        } else {
            sh.route_name(*route)
        };
        w.sample_u64(
            "garrison_panics",
            &[("http_route", route), ("location", location)],
            *n,
        );
    }
}

fn write_histogram(sh: &Shared, w: &mut MetricWriter<'_>, which: Which, name: &str, help: &str) {
    let format = w.format();
    w.kind = None;
    w.header(name, "", "histogram", help);
    let bounds: &Bounds = match which {
        Which::Duration => &sh.duration,
        Which::Request => &sh.req,
        Which::Response => &sh.resp,
    };
    let mut status_buf = itoa::Buffer::new();
    let mut err_buf = itoa::Buffer::new();
    let mut hex = [0u8; 32];
    let out = w.out();
    for (_, s) in sh.series.iter() {
        let h = match which {
            Which::Duration => &s.duration,
            Which::Request => &s.req_size,
            Which::Response => &s.resp_size,
        };
        let (counts, sum) = h.snapshot(&bounds.raw);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            // e.g. request sizes of a series whose requests had no known size
            continue;
        }
        let error = error_label(&s.key, &mut err_buf);
        let mut labels: [(&str, &str); 4] = [
            ("http_request_method", s.key.method.as_str()),
            ("http_route", sh.route_name(s.key.route)),
            ("", ""),
            ("", ""),
        ];
        let mut n = 2;
        if s.key.status != 0 {
            labels[n] = ("http_response_status_code", status_buf.format(s.key.status));
            n += 1;
        }
        if let Some(e) = error.as_deref() {
            labels[n] = ("error_type", e);
            n += 1;
        }
        let labels = &labels[..n];
        let exemplars = match (which, format) {
            (Which::Duration, Format::OpenMetrics) => s.exemplars.get(),
            _ => None,
        };
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            out.push_str(name);
            out.push_str("_bucket");
            write_labels(out, labels, Some(&bounds.le[i]));
            out.push(' ');
            out.push_str(itoa::Buffer::new().format(cumulative));
            if let Some(ex) = exemplars.and_then(|e| *e[i].lock()) {
                out.push_str(" # {trace_id=\"");
                out.push_str(ex.trace_id.to_hex(&mut hex));
                out.push_str("\"} ");
                out.push_str(&format_float(ex.value as f64 * bounds.scale));
                let _ = write!(
                    out,
                    " {}.{:03}",
                    ex.unix_millis / 1000,
                    ex.unix_millis % 1000
                );
            }
            out.push('\n');
        }
        out.push_str(name);
        out.push_str("_sum");
        write_labels(out, labels, None);
        out.push(' ');
        out.push_str(&format_float(sum as f64 * bounds.scale));
        out.push('\n');
        out.push_str(name);
        out.push_str("_count");
        write_labels(out, labels, None);
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(total));
        out.push('\n');
    }
}

impl Collector for MetricsRegistry {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        self.write_to(w);
    }
}
