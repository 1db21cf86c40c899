//! The examples run and measure what they serve, over real sockets.

use garrison_metrics::{Format, MetricsRegistry};
use garrison_workspace::{get, send, serve, serve_with_peers};

#[allow(dead_code)]
#[path = "../examples/metrics_axum.rs"]
mod metrics_axum;

#[allow(dead_code)]
#[path = "../examples/metrics_hyper.rs"]
mod metrics_hyper;

#[allow(dead_code)]
#[path = "../examples/breaker_axum.rs"]
mod breaker_axum;

#[allow(dead_code)]
#[path = "../examples/ratelimit_axum.rs"]
mod ratelimit_axum;

#[allow(dead_code)]
#[path = "../examples/admission_axum.rs"]
mod admission_axum;

#[tokio::test]
async fn metrics_axum_serves_and_measures_by_route_template() {
    let registry = MetricsRegistry::new();
    let addr = serve(metrics_axum::app(&registry)).await;
    assert_eq!(get(addr, "/users/7", &[]).await.body, "user 7\n");
    assert_eq!(get(addr, "/work?ms=1", &[]).await.body, "worked 1 ms\n");
    assert_eq!(get(addr, "/fail", &[]).await.status, 500);

    let scrape = get(addr, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200);
    for needle in [
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/users/{id}",http_response_status_code="200"} 1"#,
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/fail",http_response_status_code="500",error_type="500"} 1"#,
        r#"http_server_response_body_size_bytes_sum{http_request_method="GET",http_route="/users/{id}",http_response_status_code="200"} 7"#,
    ] {
        assert!(
            scrape.body.contains(needle),
            "missing {needle} in\n{}",
            scrape.body
        );
    }
}

#[tokio::test]
async fn metrics_hyper_serves_and_measures_by_route_table() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = MetricsRegistry::new();
    tokio::spawn(metrics_hyper::serve(listener, registry.clone()));

    for id in 0..3 {
        assert_eq!(
            get(addr, &format!("/items/{id}"), &[]).await.body,
            format!("item {id}\n")
        );
    }
    assert_eq!(get(addr, "/random/path", &[]).await.status, 404);

    let scrape = get(
        addr,
        "/metrics",
        &[("accept", "application/openmetrics-text")],
    )
    .await;
    assert_eq!(
        scrape.headers["content-type"],
        Format::OpenMetrics.content_type()
    );
    assert!(scrape.body.contains(
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/items/{id}",http_response_status_code="200"} 3"#
    ), "{}", scrape.body);
    assert!(scrape
        .body
        .contains(r#"http_route="unmatched",http_response_status_code="404""#));
    assert!(scrape.body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn breaker_axum_opens_on_the_flaky_handler_and_reports_transitions() {
    use std::sync::{Arc, Mutex};

    let breakers = garrison_breaker::BreakerRegistry::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    breakers.on_transition(move |t| log.lock().unwrap().push(format!("{} -> {}", t.from, t.to)));
    let addr = serve(breaker_axum::app(&breakers, &MetricsRegistry::new())).await;
    for _ in 0..4 {
        assert_eq!(get(addr, "/flaky", &[]).await.status, 502);
    }
    let rejected = get(addr, "/flaky", &[]).await;
    assert_eq!(rejected.status, 503);
    assert!(
        rejected.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 10
    );
    assert_eq!(*seen.lock().unwrap(), ["closed -> open"]);
    let scrape = get(addr, "/metrics", &[]).await;
    assert!(
        scrape
            .body
            .contains(r#"garrison_breaker_state{breaker="flaky",state="open"} 1"#),
        "{}",
        scrape.body
    );
}

#[tokio::test]
async fn ratelimit_axum_limits_three_routes_by_three_policies_over_real_sockets() {
    use http::Method;
    let metrics = MetricsRegistry::new();
    let limits = ratelimit_axum::limits(&metrics).build().unwrap();
    let addr = serve_with_peers(ratelimit_axum::app(limits, &metrics)).await;

    let items = get(addr, "/items", &[]).await;
    assert_eq!(items.status, 200);
    assert_eq!(items.headers["ratelimit-policy"], "\"general\";q=100;w=60");
    assert_eq!(items.headers["ratelimit"], "\"general\";r=99;t=1");

    for left in (0..5).rev() {
        let ok = send(addr, Method::POST, "/login", &[]).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.headers["x-ratelimit-remaining"],
            left.to_string().as_str()
        );
    }
    let refused = send(addr, Method::POST, "/login", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "180");
    assert_eq!(refused.headers["ratelimit-policy"], "\"auth\";q=5;w=900");
    assert!(
        refused.body.contains("\"policy\":\"auth\""),
        "{}",
        refused.body
    );

    // Uploads count per API key: a new key has a whole allowance.
    for key in ["k1", "k2"] {
        let up = send(addr, Method::POST, "/upload", &[("x-api-key", key)]).await;
        assert_eq!(up.status, 200);
        assert_eq!(up.headers["ratelimit"], "\"upload\";r=9;t=30");
    }

    let scrape = get(addr, "/metrics", &[]).await;
    assert!(
        scrape.headers.get("ratelimit").is_none(),
        "/metrics is exempt"
    );
    for line in [
        "garrison_ratelimit_decisions_total{policy=\"auth\",decision=\"allowed\"} 5",
        "garrison_ratelimit_decisions_total{policy=\"auth\",decision=\"limited\"} 1",
        "garrison_ratelimit_decisions_total{policy=\"upload\",decision=\"allowed\"} 2",
        "garrison_ratelimit_tracked_keys{policy=\"upload\"} 2",
    ] {
        assert!(
            scrape.body.contains(line),
            "missing {line} in\n{}",
            scrape.body
        );
    }
}

#[allow(dead_code)]
#[path = "../examples/health_axum.rs"]
mod health_axum;

#[tokio::test]
async fn health_axum_reports_the_pool_and_redis_on_all_three_routes() {
    let db_url = std::env::var("GARRISON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis_url = std::env::var("GARRISON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let metrics = MetricsRegistry::new();
    let pool = garrison_health::DbMetrics::new(&metrics).instrument(
        "main",
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_lazy(&db_url)
            .unwrap(),
    );
    let health = health_axum::health(&pool, &redis_url, Some("s3cret".into()), &metrics).unwrap();
    health.refresh().await;
    let addr = serve(health_axum::app(pool, &health, &metrics)).await;

    let live = get(addr, "/health/live", &[]).await;
    assert_eq!(
        (live.status.as_u16(), live.body.as_str()),
        (200, r#"{"status":"pass"}"#)
    );
    assert_eq!(live.headers["content-type"], "application/health+json");
    let ready = get(addr, "/health/ready", &[]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, r#"{"status":"pass"}"#),
        "PostgreSQL ({db_url}) and Redis ({redis_url}) must answer; start them with `just services`"
    );
    let deep = get(addr, "/health", &[("authorization", "Bearer s3cret")]).await;
    let body: serde_json::Value = serde_json::from_str(&deep.body).unwrap();
    assert_eq!(body["status"], "pass", "{body}");
    assert_eq!(body["serviceId"], "health-example");
    for key in [
        "postgres:responseTime",
        "postgres:utilization",
        "postgres:connections",
        "redis:responseTime",
    ] {
        assert_eq!(body["checks"][key][0]["status"], "pass", "{key} in {body}");
    }
    let count = get(addr, "/orders/count", &[]).await;
    assert_eq!(count.status, 200);
    assert!(count.body.ends_with(" sessions\n"), "{}", count.body);
    let scrape = get(addr, "/metrics", &[]).await;
    for needle in [
        "db_client_connection_max{db_client_connection_pool_name=\"main\"} 10\n",
        "db_client_connection_wait_time_seconds_count{db_client_connection_pool_name=\"main\"} 1\n",
        "garrison_health_check_status{check=\"postgres\",status=\"pass\"} 1\n",
        "garrison_health_check_status{check=\"redis\",status=\"pass\"} 1\n",
    ] {
        assert!(
            scrape.body.contains(needle),
            "missing {needle} in\n{}",
            scrape.body
        );
    }
}

/// The gateway configuration of the gateway's README is a valid one, with the options it
/// shows; so is the shorter one of the repository's README.
#[test]
fn the_readmes_gateway_configurations_are_valid() {
    let config = |file: &str| {
        let readme =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let start = readme
            .find("```toml\n[gateway.upstreams.shop]")
            .unwrap_or_else(|| panic!("the gateway configuration of {file}"))
            + "```toml\n".len();
        let len = readme[start..].find("```").unwrap();
        garrison_gateway::GatewayConfig::from_toml(&readme[start..start + len])
            .unwrap_or_else(|e| panic!("the gateway configuration of {file}: {e}"))
    };
    let full = config("crates/garrison-gateway/README.md");
    let routes = &full.gateway.routes;
    assert_eq!(routes["login"].max_body_bytes, Some(65536));
    assert_eq!(routes["chat"].upgrades, ["websocket"]);
    assert_eq!(full.gateway.upstreams["shop"].addresses.len(), 2);
    let short = config("README.md");
    assert_eq!(
        short.gateway.routes["login"].ratelimit.as_deref(),
        Some("auth")
    );
    assert_eq!(short.gateway.upstreams["shop"].addresses.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_axum_runs_two_waits_four_and_sheds_the_rest() {
    let metrics = MetricsRegistry::new();
    let admission = admission_axum::admission(&metrics);
    // a report holds its slot far longer than a batch request may wait
    let work = std::time::Duration::from_secs(2);
    let addr = serve(admission_axum::app(admission, &metrics, work)).await;
    let reports: Vec<_> = (0..8)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/reports/{i}"), &[]).await }))
        .collect();
    let mut statuses = Vec::new();
    for r in reports {
        let r = r.await.unwrap();
        if r.status == 503 {
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503, 503, 503]);
    let scrape = get(addr, "/metrics", &[]).await;
    for needle in [
        r#"garrison_admission_admitted_total{priority="batch"} 2"#,
        r#"garrison_admission_shed_total{priority="batch",reason="timeout"} 4"#,
        r#"garrison_admission_shed_total{priority="batch",reason="queue_full"} 2"#,
    ] {
        assert!(
            scrape.body.contains(needle),
            "missing {needle} in\n{}",
            scrape.body
        );
    }
}
