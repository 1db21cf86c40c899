//! Garrison in the user's own stack: the `metrics` crate's macros and a `prometheus_client`
//! registry on Garrison's one `/metrics`, checked by the real `promtool` and by the official
//! Python client's OpenMetrics parser.

use std::process::{Command, Stdio};
use std::sync::Arc;

use garrison_metrics::{Format, GarrisonRecorder, MetricsRegistry, PrometheusClientCollector};
use garrison_workspace::{promtool_check, require_tool};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Queue {
    queue: String,
}

/// A registry with Garrison's families, the `metrics` crate's and prometheus-client's.
fn everything() -> (MetricsRegistry, GarrisonRecorder) {
    let registry = MetricsRegistry::new();
    let recorder = GarrisonRecorder::new(&registry);
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!("orders.placed", "Orders placed, by channel.");
        metrics::counter!("orders.placed", "channel" => "web").increment(3);
        metrics::counter!("orders.placed", "channel" => "app").increment(1);
        metrics::gauge!("cart_items").set(4.5);
        metrics::histogram!("checkout_seconds", "step" => "pay").record(0.02);
        metrics::histogram!("checkout_seconds", "step" => "pay").record(7.0);
    });
    let mut theirs = prometheus_client::registry::Registry::default();
    let jobs = Family::<Queue, Counter>::default();
    theirs.register("jobs_done", "Jobs finished", jobs.clone());
    jobs.get_or_create(&Queue {
        queue: "mail".into(),
    })
    .inc_by(5);
    let workers: Gauge = Gauge::default();
    theirs.register("workers", "Busy workers", workers.clone());
    workers.set(2);
    registry.register_collector(Arc::new(PrometheusClientCollector::new(Arc::new(theirs))));
    (registry, recorder)
}

#[test]
fn the_metrics_crate_and_prometheus_client_share_garrisons_endpoint() {
    let (registry, _) = everything();
    let text = registry.render(Format::Prometheus);
    for line in [
        "orders_placed_total{channel=\"web\"} 3\n",
        "orders_placed_total{channel=\"app\"} 1\n",
        "# HELP orders_placed_total Orders placed, by channel.\n",
        "cart_items 4.5\n",
        "checkout_seconds_bucket{step=\"pay\",le=\"0.025\"} 1\n",
        "checkout_seconds_bucket{step=\"pay\",le=\"+Inf\"} 2\n",
        "checkout_seconds_count{step=\"pay\"} 2\n",
        "jobs_done_total{queue=\"mail\"} 5\n",
        "workers 2\n",
        "http_server_active_requests",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    promtool_check(&require_tool("promtool", "prometheus"), &text);
}

#[test]
fn the_openmetrics_scrape_parses_with_the_official_python_client() {
    let (registry, _) = everything();
    let om = registry.render(Format::OpenMetrics);
    assert!(
        om.ends_with("# EOF\n") && om.matches("# EOF").count() == 1,
        "{om}"
    );
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
found = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        found[(s.name, tuple(sorted(s.labels.items())))] = s.value
want = {
    ("orders_placed_total", (("channel", "web"),)): 3,
    ("cart_items", ()): 4.5,
    ("checkout_seconds_count", (("step", "pay"),)): 2,
    ("jobs_done_total", (("queue", "mail"),)): 5,
    ("workers", ()): 2,
}
for k, v in want.items():
    assert found.get(k) == v, (k, found.get(k))
print("ok", len(found))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(om.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser (pip package prometheus-client, from \
         tests/peers/requirements.txt) refused the scrape:\n{report}\n--- scrape ---\n{om}"
    );
}

#[test]
fn series_beyond_the_recorders_cap_are_counted_not_kept() {
    let registry = MetricsRegistry::new();
    let recorder = GarrisonRecorder::builder()
        .max_series(10)
        .build(&registry)
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        for i in 0..1000 {
            metrics::counter!("hostile", "user" => i.to_string()).increment(1);
        }
    });
    assert_eq!(recorder.series_dropped(), 990);
    let text = registry.render(Format::Prometheus);
    assert_eq!(text.matches("hostile_total{").count(), 10);
    assert!(text.contains("garrison_metrics_recorder_series_dropped_total 990\n"));
}
