//! Garrison in the user's own stack: the `metrics` crate's macros and a `prometheus_client`
//! registry on Garrison's one `/metrics`, checked by the real `promtool` and by the official
//! Python client's OpenMetrics parser.

use std::process::Command;
use std::sync::Arc;

use garrison_metrics::{Format, GarrisonRecorder, MetricsRegistry, PrometheusClientCollector};
use garrison_workspace::{promtool_check, require_tool, run_with_input};
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
    let (ok, report) = run_with_input(Command::new("python3").args(["-c", script]), &om);
    assert!(
        ok,
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

/// The handler of the whole-stack test: its own `tracing` span, the metrics crate, and the
/// request id tower-http's layer made.
#[tracing::instrument(skip_all)]
async fn read_order(
    axum::extract::State(recorder): axum::extract::State<GarrisonRecorder>,
    axum::Extension(id): axum::Extension<tower_http::request_id::RequestId>,
) -> String {
    metrics::with_local_recorder(&recorder, || metrics::counter!("orders_read").increment(1));
    id.header_value().to_str().unwrap().to_owned()
}

/// One service with everything a current axum service brings: tracing-opentelemetry on an SDK
/// pipeline, a sqlx 0.9 pool, the metrics crate, a prometheus-client registry and tower-http's
/// request-id layers, all used with the one Garrison layer over a real socket.
#[tokio::test]
async fn a_current_axum_service_keeps_its_stack_under_one_garrison_layer() {
    use garrison::garrison_health::{CheckOptions, PoolCheck};
    use garrison::garrison_trace::{Pipeline, Tracer};
    use opentelemetry::trace::TracerProvider as _;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tracing_subscriber::layer::SubscriberExt;

    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let url = std::env::var("GARRISON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} (GARRISON_TEST_POSTGRES_URL) does not answer: {e}; start it with `just services`")
        });
    let garrison = garrison::Garrison::builder()
        .tracer(Tracer::builder().pipeline(Pipeline::new(&provider)).build())
        .check("postgres", PoolCheck::new(pool), CheckOptions::readiness())
        .build()
        .unwrap();
    garrison.health().refresh().await;
    let recorder = GarrisonRecorder::new(garrison.metrics());
    let mut theirs = prometheus_client::registry::Registry::default();
    let legacy: Gauge = Gauge::default();
    theirs.register("legacy_workers", "Workers of the old code", legacy.clone());
    legacy.set(3);
    garrison
        .metrics()
        .register_collector(Arc::new(PrometheusClientCollector::new(Arc::new(theirs))));

    let app = axum::Router::new()
        .route("/orders/{id}", axum::routing::get(read_order))
        .with_state(recorder)
        .layer(garrison.layer())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    let addr = garrison_workspace::serve_with_peers(app).await;

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = garrison_workspace::get(addr, "/orders/7", &[("traceparent", caller)]).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let id = resp.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "tower-http's UUID, outside: {id}");
    assert_eq!(resp.body, id, "the handler saw the same id");

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let server = spans
        .iter()
        .find(|s| s.name == "GET /orders/{id}")
        .expect("garrison's server span in the user's pipeline");
    let handler = spans
        .iter()
        .find(|s| s.name == "read_order")
        .expect("the handler's span");
    assert_eq!(
        server.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(handler.parent_span_id, server.span_context.span_id());

    let scrape = garrison_workspace::get(addr, "/metrics", &[]).await;
    for line in [
        "orders_read_total 1\n",
        "legacy_workers 3\n",
        "http_server_request_duration_seconds_bucket{http_request_method=\"GET\",http_route=\"/orders/{id}\"",
    ] {
        assert!(scrape.body.contains(line), "no {line:?} in\n{}", scrape.body);
    }
    promtool_check(&require_tool("promtool", "prometheus"), &scrape.body);
    let ready = garrison_workspace::get(addr, "/health/ready", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}
