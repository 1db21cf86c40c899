//! The registry's own metric families.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use garrison_metrics::{Collector, MetricType, MetricWriter, MetricsRegistry};

use crate::registry::Inner;
use crate::{HealthRegistry, Status};

struct HealthCollector(Arc<Inner>);

impl HealthRegistry {
    /// Publishes `garrison_health_check_status{check,status}` (1 for the current status, 0 for
    /// the others), `garrison_health_check_duration_seconds{check}` (the last run) and
    /// `garrison_health_check_runs_total{check}` through `metrics`.
    pub fn metrics(&self, metrics: &MetricsRegistry) {
        metrics.register_collector(Arc::new(HealthCollector(self.inner.clone())));
    }
}

impl Collector for HealthCollector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let checks = self.0.checks.read().clone();
        w.family(
            "garrison_health_check_status",
            MetricType::Gauge,
            "Health check status: 1 for the current status (pass, warn, fail), 0 for the others; none before the first run.",
        );
        for e in &checks {
            let Some(now) = e.last.read().as_ref().map(|o| o.status()) else {
                continue;
            };
            for s in Status::ALL {
                w.sample_u64(
                    "garrison_health_check_status",
                    &[("check", &e.name), ("status", s.as_str())],
                    u64::from(s == now),
                );
            }
        }
        w.family(
            "garrison_health_check_duration_seconds",
            MetricType::Gauge,
            "Duration of the last run of a health check.",
        );
        for e in &checks {
            if let Some(o) = e.last.read().as_ref() {
                w.sample_f64(
                    "garrison_health_check_duration_seconds",
                    &[("check", &e.name)],
                    o.duration.as_secs_f64(),
                );
            }
        }
        w.family(
            "garrison_health_check_runs",
            MetricType::Counter,
            "Runs of a health check (probes read cached results and add none).",
        );
        for e in &checks {
            w.sample_u64(
                "garrison_health_check_runs",
                &[("check", &e.name)],
                e.runs.load(Ordering::Relaxed),
            );
        }
    }
}
