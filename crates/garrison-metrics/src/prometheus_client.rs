//! A `prometheus_client` registry on Garrison's `/metrics` (feature `prometheus-client`).

use std::sync::Arc;

use crate::exposition::{Collector, Format, MetricWriter};

/// Adds a `prometheus_client::registry::Registry` (0.26) to the exposition: its families are
/// written after Garrison's, by prometheus-client's own encoders (the OpenMetrics text for
/// OpenMetrics scrapes, the Prometheus text format 0.0.4 for the others), so one `/metrics`
/// serves both.
///
/// ```
/// use std::sync::Arc;
/// use garrison_metrics::{Format, MetricsRegistry, PrometheusClientCollector};
/// use prometheus_client::metrics::counter::Counter;
///
/// let mut theirs = prometheus_client::registry::Registry::default();
/// let jobs: Counter = Counter::default();
/// theirs.register("jobs", "Jobs done", jobs.clone());
/// jobs.inc();
///
/// let registry = MetricsRegistry::new();
/// registry.register_collector(Arc::new(PrometheusClientCollector::new(Arc::new(theirs))));
/// assert!(registry.render(Format::Prometheus).contains("jobs_total 1\n"));
/// let om = registry.render(Format::OpenMetrics);
/// assert!(om.contains("jobs_total 1\n") && om.ends_with("# EOF\n"));
/// ```
#[derive(Debug)]
pub struct PrometheusClientCollector {
    registry: Arc<prometheus_client::registry::Registry>,
}

impl PrometheusClientCollector {
    /// A collector that writes `registry` at every scrape.
    pub fn new(registry: Arc<prometheus_client::registry::Registry>) -> Self {
        Self { registry }
    }
}

impl Collector for PrometheusClientCollector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let format = w.format();
        w.kind = None;
        let out = w.out();
        let written = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode_registry(out, &self.registry)
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
            }
        };
        // writing to a String fails only where prometheus-client refuses a metric of its
        // own; what it wrote before stays, and Garrison's families are whole either way
        let _ = written;
    }
}
