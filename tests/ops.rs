//! The operations files of `examples/ops/` against the real tools and the real exporter:
//! the rules are what the generator writes, `promtool` checks them and runs their unit
//! tests, generated rules for a configuration's own routes pass too, every alert has a
//! runbook, and the dashboard's and the rules' PromQL name only metric families and labels
//! that a live `/metrics` of the example app shows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use garrison::{Garrison, GarrisonConfig};
use garrison_workspace::{get, require_tool, send, serve_with_peers};
use http::Method;

#[allow(dead_code)]
#[path = "../examples/axum_app.rs"]
mod axum_app;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ops(file: &str) -> PathBuf {
    root().join("examples/ops").join(file)
}

fn promtool(args: &[&Path]) -> (bool, String) {
    let promtool = require_tool("promtool", "prometheus");
    let out = Command::new(promtool)
        .args(args)
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_shipped_rules_are_what_the_generator_writes_for_the_defaults() {
    let shipped = std::fs::read_to_string(ops("garrison-rules.yml")).unwrap();
    let generated = garrison::ops::rules(&GarrisonConfig::default());
    assert!(
        shipped == generated,
        "examples/ops/garrison-rules.yml is out of date; write it again with\n  \
         cargo run -p garrison-gateway -- ops rules -o examples/ops/garrison-rules.yml"
    );
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_only_when_it_should() {
    let rules = ops("garrison-rules.yml");
    let (ok, report) = promtool(&[Path::new("check"), Path::new("rules"), &rules]);
    assert!(ok, "{report}");
    for tests in [
        "garrison-rules.test.yml",
        "garrison-rules.slow-burn.test.yml",
    ] {
        let (ok, report) = promtool(&[Path::new("test"), Path::new("rules"), &ops(tests)]);
        assert!(ok, "{tests}:\n{report}");
    }
    // each alert is tested for firing (and, in the same files, for staying silent)
    let tests = std::fs::read_to_string(ops("garrison-rules.test.yml")).unwrap()
        + &std::fs::read_to_string(ops("garrison-rules.slow-burn.test.yml")).unwrap();
    for alert in garrison::ops::ALERTS {
        let fired = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(&format!("{alert}\n")))
            .any(|case| {
                case.lines()
                    .nth(1)
                    .is_some_and(|l| l.trim() == "exp_alerts:")
            });
        assert!(fired, "no promtool test sees {alert} fire");
    }
}

/// A configuration's own SLOs: a route with an objective of its own, a selector that keeps
/// other jobs out, and a whole-second threshold (`le="1"` as exposed, `le="1.0"` as
/// Prometheus 3 stores it).
#[test]
fn rules_for_a_configurations_own_routes_pass_promtool_and_fire_on_their_objective() {
    let config = GarrisonConfig::from_toml(
        r#"
        [ops]
        selector = 'job="shop"'
        runbook_url = "https://runbooks.example/garrison/"
        [ops.routes."/api/orders/{id}"]
        availability_objective = 0.99
        latency_threshold = "1s"
        "#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, garrison::ops::rules(&config)).unwrap();
    let (ok, report) = promtool(&[Path::new("check"), Path::new("rules"), &rules]);
    assert!(ok, "{report}");

    let count = |job: &str, route: &str, code: &str| {
        format!("http_server_request_duration_seconds_count{{job=\"{job}\",instance=\"a\",http_route=\"{route}\",http_request_method=\"GET\",http_response_status_code=\"{code}\"}}")
    };
    let orders = "/api/orders/{id}";
    let bucket = format!(
        "http_server_request_duration_seconds_bucket{{job=\"shop\",instance=\"a\",http_route=\"{orders}\",http_request_method=\"GET\",http_response_status_code=\"200\",le=\"1.0\"}}"
    );
    let tests = format!(
        r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  # 20% of the orders route fails: above its own 14.4 x 1%; the service (0.1% budget) burns
  # as well. Another job failing everything is not this service.
  - interval: 1m
    input_series:
      - series: '{ok}'
        values: '0+80x70'
      - series: '{fail}'
        values: '0+20x70'
      - series: '{other}'
        values: '0+50x70'
    alert_rule_test:
      - eval_time: 65m
        alertname: GarrisonAvailabilityBurnRateFast
        exp_alerts:
          - exp_labels: {{severity: critical, job: shop}}
            exp_annotations:
              summary: "shop: Availability SLO budget burning fast"
              description: "The availability SLO (99.9% of requests answered without a 5xx) burned 2% of its 30-day error budget in the last hour, or 5% in the last 6 hours: at this rate it is gone in 2 to 5 days."
              runbook_url: "https://runbooks.example/garrison/GarrisonAvailabilityBurnRateFast.md"
          - exp_labels: {{severity: critical, job: shop, http_route: "{orders}"}}
            exp_annotations:
              summary: "shop {orders}: Availability SLO budget burning fast"
              description: "The availability SLO (99% of requests answered without a 5xx) burned 2% of its 30-day error budget in the last hour, or 5% in the last 6 hours: at this rate it is gone in 2 to 5 days."
              runbook_url: "https://runbooks.example/garrison/GarrisonAvailabilityBurnRateFast.md"
  # 5% fails: the service's budget burns, the route's own (1%, page at 14.4%) does not
  - interval: 1m
    input_series:
      - series: '{ok}'
        values: '0+95x70'
      - series: '{fail}'
        values: '0+5x70'
    promql_expr_test:
      - expr: ALERTS{{alertname="GarrisonAvailabilityBurnRateFast"}}
        eval_time: 65m
        exp_samples:
          - labels: 'ALERTS{{alertname="GarrisonAvailabilityBurnRateFast",alertstate="firing",job="shop",severity="critical"}}'
            value: 1
  # half the orders take more than 1 s, with le="1.0" as Prometheus 3 stores it
  - interval: 1m
    input_series:
      - series: '{bucket}'
        values: '0+50x10'
      - series: '{ok}'
        values: '0+100x10'
    promql_expr_test:
      - expr: job_route:slo_latency_errors:ratio_rate5m
        eval_time: 8m
        exp_samples:
          - labels: 'job_route:slo_latency_errors:ratio_rate5m{{job="shop",http_route="{orders}"}}'
            value: 0.5
"#,
        ok = count("shop", orders, "200"),
        fail = count("shop", orders, "500"),
        other = count("books", "/books", "500"),
    );
    let test_file = dir.path().join("rules.test.yml");
    std::fs::write(&test_file, tests).unwrap();
    let (ok, report) = promtool(&[Path::new("test"), Path::new("rules"), &test_file]);
    assert!(ok, "{report}");
}

#[test]
fn every_alert_has_a_runbook_and_the_rules_hold_every_alert() {
    let rules = std::fs::read_to_string(ops("garrison-rules.yml")).unwrap();
    let in_rules: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let known: BTreeSet<&str> = garrison::ops::ALERTS.iter().copied().collect();
    assert_eq!(in_rules, known);
    for alert in garrison::ops::ALERTS {
        let runbook = root().join(format!("docs/runbooks/{alert}.md"));
        let text = std::fs::read_to_string(&runbook)
            .unwrap_or_else(|e| panic!("{}: {e}", runbook.display()));
        assert!(text.starts_with(&format!("# {alert}\n")), "{alert}'s title");
        for part in ["## Meaning", "## Confirm", "## Act"] {
            assert!(text.contains(part), "{alert}'s runbook has no `{part}`");
        }
    }
}

#[test]
fn bad_ops_values_are_reported_with_their_paths() {
    let err = GarrisonConfig::from_toml(
        r#"
        [ops]
        latency_threshold = "300ms"
        availability_objective = 1
        selector = "job=shop"
        [ops.routes."/orders/{id}"]
        latency_objective = 0
        colour = "red"
        "#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "ops.latency_threshold: must be one of [metrics] duration_buckets",
        "ops.availability_objective: must be between 0 and 1",
        "ops.selector: `job=shop`",
        "ops.routes.\"/orders/{id}\".latency_objective: must be between 0 and 1",
        "ops.routes.\"/orders/{id}\".colour: unknown key",
    ] {
        assert!(err.contains(want), "`{want}` missing from:\n{err}");
    }
}

/// The metric families, sample names and label names of a live scrape of the example app
/// with everything that exports metrics turned on: a SQLite pool checked by health, the
/// Redis store, breakers, policies, traces, the process and the runtime.
async fn live_scrape() -> (BTreeSet<String>, BTreeSet<String>) {
    let redis = std::env::var("GARRISON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let db = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "{}\n[ratelimit.redis]\nurl = \"{redis}\"\n[health.checks.db]\ntype = \"sqlite\"\nurl = \"sqlite://{}\"\n",
        axum_app::CONFIG,
        db.path().display()
    );
    let garrison = Garrison::from_config(GarrisonConfig::from_toml(&config).unwrap()).unwrap();
    let addr = serve_with_peers(axum_app::app(&garrison)).await;
    assert_eq!(get(addr, "/api/products/1", &[]).await.status, 200);
    assert_eq!(
        send(addr, Method::POST, "/uploads/a.png", &[]).await.status,
        200
    );
    // a handler's panic: `garrison_panics_total` and its labels
    assert_eq!(get(addr, "/api/orders/13", &[]).await.status, 500);
    // the database profile opens after 5 calls, half of them failing: a transition
    for _ in 0..5 {
        get(addr, "/api/orders/0", &[]).await;
    }
    assert_eq!(get(addr, "/api/orders/1", &[]).await.status, 503);
    let mut ready = http::StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..200 {
        ready = get(addr, "/health/ready", &[]).await.status;
        if ready == http::StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ready, http::StatusCode::OK, "the example app became ready");
    let mut text = get(addr, "/metrics", &[]).await.body;
    // and the gateway's own families, from a gateway in front of the app
    text.push_str(&gateway_scrape(addr).await);

    let mut names = BTreeSet::new();
    let mut labels: BTreeSet<String> = ["job", "instance", "__name__"]
        .into_iter()
        .map(String::from)
        .collect();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            names.insert(line[..name_end].to_owned());
            if let Some(set) = line[name_end..].strip_prefix('{') {
                let set = &set[..set.find("} ").unwrap()];
                for pair in set.split("\",") {
                    labels.insert(pair.split('=').next().unwrap().to_owned());
                }
            }
        }
    }
    for family in [
        "garrison_gateway_upstream_ejections_total",
        "db_client_connection_usage",
        "garrison_ratelimit_store_fallbacks_total",
        "garrison_breaker_state",
        "garrison_health_check_status",
        "garrison_panics_total",
        "process_cpu_seconds_total",
        "tokio_runtime_workers",
    ] {
        assert!(
            names.contains(family),
            "{family} in the live scrape:\n{text}"
        );
    }
    (names, labels)
}

/// The `/metrics` of a gateway in front of `upstream`, after one request through it.
async fn gateway_scrape(upstream: std::net::SocketAddr) -> String {
    let config = garrison_gateway::GatewayConfig::from_toml(&format!(
        "[gateway]\nadmin_listen = \"\"\nadmin_token = \"t\"\nobservability = \"main\"\n\
         [gateway.upstreams.app]\naddresses = [\"{upstream}\"]\n\
         [gateway.routes.all]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .unwrap();
    let gateway = garrison_gateway::Gateway::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, None).await });
    assert_eq!(get(addr, "/api/products/1", &[]).await.status, 200);
    let text = get(addr, "/metrics", &[]).await.body;
    gateway.shutdown();
    text
}

/// The metric names and the label names one PromQL expression uses.
fn promql_names(expr: &str) -> (Vec<String>, Vec<String>) {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "inf",
        "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut labels) = (Vec::new(), Vec::new());
    let mut braces = 0;
    let mut label_list = false; // inside `by (…)`, `on (…)` and their kin
    let mut brackets = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            ')' if label_list => label_list = false,
            '$' => {
                // a Grafana variable: $job, ${job}, $__rate_interval
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_digit()
                || (c == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit()) =>
            {
                // a number (1e3, 0.5) or a duration (5m)
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_:".contains(chars[i])) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
                if brackets > 0 {
                } else if braces > 0 || label_list {
                    labels.push(word);
                } else if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    label_list = next == Some('(');
                    if label_list {
                        while chars[i] != '(' {
                            i += 1;
                        }
                        i += 1;
                    }
                } else if next == Some('(') || KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    // a function or an operator
                } else {
                    metrics.push(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (metrics, labels)
}

#[test]
fn the_promql_reader_of_these_tests_finds_names_and_labels() {
    let (m, l) = promql_names(
        "histogram_quantile(0.95, sum by (le, http_route) (rate(a_bucket{job=~\"$job\", x=\"{y}\"}[$__rate_interval])))\n/ ignoring (s) b:c:d > bool 1e3 and on (job) max(c offset 5m) * 2",
    );
    assert_eq!(m, ["a_bucket", "b:c:d", "c"]);
    assert_eq!(l, ["le", "http_route", "job", "x", "s", "job"]);
}

/// Every PromQL expression of the dashboard and of the rules names only families (and
/// labels) a live `/metrics` shows, or series the rules record: neither can drift from the
/// code.
#[tokio::test]
async fn the_dashboard_and_the_rules_name_only_what_garrison_exports() {
    let (mut names, labels) = live_scrape().await;
    let rules = std::fs::read_to_string(ops("garrison-rules.yml")).unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    let mut lines = rules.lines().peekable();
    let mut what = String::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- record: ") {
            names.insert(name.to_owned());
            what = format!("record {name}");
        } else if let Some(name) = t.strip_prefix("- alert: ") {
            what = format!("alert {name}");
        } else if t == "expr: |" {
            let mut expr = String::new();
            while let Some(l) = lines.next_if(|l| l.starts_with("          ")) {
                expr.push_str(l.trim());
                expr.push('\n');
            }
            exprs.push((what.clone(), expr));
        }
    }
    assert!(exprs.len() > 30, "{} rule expressions", exprs.len());

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ops("garrison-dashboard.json")).unwrap())
            .unwrap();
    let templating = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        templating
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "the Prometheus data source is a variable"
    );
    for v in templating.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap();
        let (series, label) = inner.rsplit_once(", ").unwrap();
        exprs.push((format!("variable {}", v["name"]), series.to_owned()));
        assert!(
            labels.contains(label),
            "variable {}: label {label}",
            v["name"]
        );
    }
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        panels += 1;
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for t in targets {
            exprs.push((
                format!("panel {}", panel["title"]),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(panels >= 25, "{panels} panels");

    let mut problems = Vec::new();
    for (what, expr) in &exprs {
        let (metrics, used) = promql_names(expr);
        assert!(!metrics.is_empty(), "{what}: no metric in {expr}");
        for m in metrics {
            if !names.contains(&m) {
                problems.push(format!("{what}: `{m}` is not exported"));
            }
        }
        for l in used {
            if !labels.contains(&l) {
                problems.push(format!("{what}: no series has the label `{l}`"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A plain tower service that fails with an error (no response at all) is a server error to
/// the shipped rules: the series `MetricsLayer` records for it, fed to promtool as they are
/// scraped, make the error ratio and the availability SLO count it.
#[tokio::test]
async fn a_service_error_counts_as_a_server_error_in_the_shipped_rules() {
    use garrison_metrics::{Format, MetricsLayer, MetricsRegistry};
    use tower::{Service, ServiceBuilder, ServiceExt};

    let registry = MetricsRegistry::builder()
        .process_metrics(false)
        .runtime_metrics(false)
        .build();
    let table = garrison_core::RouteTable::from_patterns(["/boom"]).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&registry).route_table(table))
        .service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<String>, _>("the database went away")
        });
    let req = http::Request::get("/boom").body(()).unwrap();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err, "the database went away");
    let scrape = registry.render(Format::Prometheus);
    let line = scrape
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .unwrap_or_else(|| panic!("no count in\n{scrape}"));
    let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
    assert!(labels.contains(r#"error_type="service_error""#), "{line}");
    // the series as Prometheus stores it once scraped from job "shop"
    let failed = format!(
        "http_server_request_duration_seconds_count{{job=\"shop\",instance=\"a\",{labels}}}"
    );
    let ok = "http_server_request_duration_seconds_count{job=\"shop\",instance=\"a\",http_route=\"/boom\",http_request_method=\"GET\",http_response_status_code=\"200\"}";
    let tests = format!(
        r#"rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # one request in four fails with a service error
  - interval: 1m
    input_series:
      - series: '{ok}'
        values: '0+30x10'
      - series: '{failed}'
        values: '0+10x10'
    promql_expr_test:
      - expr: job_route:http_server_error_ratio:rate5m
        eval_time: 8m
        exp_samples:
          - labels: 'job_route:http_server_error_ratio:rate5m{{job="shop",http_route="/boom"}}'
            value: 0.25
"#,
        rules = ops("garrison-rules.yml").display(),
    );
    let dir = tempfile::tempdir().unwrap();
    let test_file = dir.path().join("service-error.test.yml");
    std::fs::write(&test_file, tests).unwrap();
    let (ok, report) = promtool(&[Path::new("test"), Path::new("rules"), &test_file]);
    assert!(ok, "{report}");
}
