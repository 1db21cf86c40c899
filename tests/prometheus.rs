//! The real Prometheus tools read what Garrison exposes: `promtool check metrics` accepts the
//! text format, and a real Prometheus server scrapes the example app (in OpenMetrics, with
//! exemplars), then answers a `histogram_quantile` query for its route.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use garrison_metrics::{MetricsRegistry, TraceContext, TraceId};
use garrison_workspace::{free_port, get, promtool_check, require_tool, serve, KillOnDrop};

#[allow(dead_code)]
#[path = "../examples/metrics_axum.rs"]
mod example;

/// A stand-in for the trace layer: joins the caller's `traceparent` so the metrics layer sees
/// a sampled trace context, as it will behind Garrison's trace layer.
fn with_trace_context(router: axum::Router) -> axum::Router {
    router.layer(tower::util::MapRequestLayer::new(
        |mut req: axum::extract::Request| {
            let ctx = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split('-').nth(1))
                .and_then(TraceId::from_hex);
            if let Some(id) = ctx {
                req.extensions_mut().insert(TraceContext::sampled(id));
            }
            req
        },
    ))
}

async fn traffic(addr: std::net::SocketAddr, rounds: usize) {
    for i in 0..rounds {
        assert_eq!(get(addr, &format!("/users/{i}"), &[]).await.status, 200);
        assert_eq!(get(addr, "/work?ms=3", &[]).await.status, 200);
        assert_eq!(get(addr, "/fail", &[]).await.status, 500);
        assert_eq!(get(addr, "/no/such/route", &[]).await.status, 404);
    }
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let promtool = require_tool("promtool", "prometheus");
    let registry = MetricsRegistry::new();
    // The rate limiter's families (with a Redis store's) go through promtool too.
    let limits = garrison_ratelimit::RateLimitLayer::builder()
        .policy(garrison_ratelimit::Policy::per_minute("general", 100))
        .store(garrison_ratelimit::RedisStore::new("redis://127.0.0.1:1").unwrap())
        .metrics(&registry)
        .build()
        .unwrap();
    assert!(limits
        .limiter()
        .check("general", garrison_ratelimit::ClientKey(1))
        .unwrap()
        .is_allowed());
    // The health families and the pool's db_client_connection_* (a real PostgreSQL pool).
    let health = garrison_health::HealthRegistry::new();
    health.metrics(&registry);
    health
        .register(
            "queue",
            garrison_health::check_fn(|| async { garrison_health::CheckResult::warn("deep") }),
            garrison_health::CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let pg_url = std::env::var("GARRISON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = garrison_health::DbMetrics::new(&registry).instrument(
        "main",
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect_lazy(&pg_url)
            .unwrap(),
    );
    let conn = pool.acquire().await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {pg_url} (GARRISON_TEST_POSTGRES_URL) does not answer: {e}; start it with `just services`")
    });
    let addr = serve(with_trace_context(example::app(&registry))).await;
    traffic(addr, 3).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    get(addr, "/work?ms=30", &[("traceparent", traceparent)]).await;

    let scrape = get(addr, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.body.contains(r#"http_route="/users/{id}""#),
        "{}",
        scrape.body
    );
    assert!(scrape.body.contains("process_resident_memory_bytes"));
    assert!(scrape.body.contains("tokio_runtime_workers"));
    assert!(scrape
        .body
        .contains("garrison_ratelimit_decisions_total{policy=\"general\",decision=\"allowed\"} 1"));
    assert!(scrape
        .body
        .contains("garrison_ratelimit_store_available{store=\"redis\"} 1"));
    assert!(scrape.body.contains(
        "db_client_connection_usage{db_client_connection_pool_name=\"main\",db_client_connection_state=\"used\"} 1"
    ));
    assert!(scrape
        .body
        .contains("garrison_health_check_status{check=\"queue\",status=\"warn\"} 1"));
    drop(conn);

    promtool_check(&promtool, &scrape.body);
}

async fn query(prom: std::net::SocketAddr, q: &str) -> serde_json::Value {
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let resp = get(prom, &path, &[]).await;
    assert_eq!(resp.status, 200, "{q}: {}", resp.body);
    serde_json::from_str(&resp.body).expect("Prometheus answers JSON")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_example_and_answers_a_quantile_query() {
    let prometheus = require_tool("prometheus", "prometheus");
    let registry = MetricsRegistry::new();
    let app_addr = serve(with_trace_context(example::app(&registry))).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: garrison\n    static_configs:\n      - targets: ['{app_addr}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let _prom = KillOnDrop::spawn(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let quantile = r#"histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{job="garrison",http_route="/users/{id}"}[30s])))"#;
    // Bounded wait: Prometheus needs two scrapes of a moving counter for rate().
    let deadline = Instant::now() + Duration::from_secs(90);
    let p99 = loop {
        traffic(app_addr, 5).await;
        get(app_addr, "/work?ms=60", &[("traceparent", traceparent)]).await;
        let ready = tokio::net::TcpStream::connect(prom_addr).await.is_ok()
            && get(prom_addr, "/-/ready", &[]).await.status == 200;
        if ready {
            let v = query(prom_addr, quantile).await;
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if let Some(p99) = value.filter(|x| x.is_finite()) {
                break p99;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus gave no finite p99 within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The route answers in microseconds; its p99 lies inside the histogram's finite range.
    assert!(p99 > 0.0 && p99 <= 10.0, "p99 = {p99}");

    // The scrape was healthy, in OpenMetrics, and labels are the route templates.
    let up = query(prom_addr, r#"up{job="garrison"}"#).await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let routes = query(
        prom_addr,
        r#"count by (http_route) (http_server_request_duration_seconds_count{job="garrison"})"#,
    )
    .await;
    let mut seen: Vec<String> = routes["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["http_route"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    // `/metrics` is mounted outside the layer, so scrapes are not measured.
    assert_eq!(seen, ["/fail", "/users/{id}", "/work", "unmatched"]);

    // The exemplar of the traced request reached Prometheus with its trace id.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        urlencode(
            r#"http_server_request_duration_seconds_bucket{job="garrison",http_route="/work"}"#
        ),
        now - 300,
        now + 60
    );
    let resp = get(prom_addr, &path, &[]).await;
    assert!(
        resp.body.contains("0af7651916cd43dd8448eb211c80319c"),
        "no exemplar with the trace id in Prometheus: {}",
        resp.body
    );
}

#[tokio::test]
async fn promtool_accepts_the_whole_garrison_with_database_checks_from_its_config() {
    let promtool = require_tool("promtool", "prometheus");
    let pg_url = std::env::var("GARRISON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let config = garrison::GarrisonConfig::from_toml(&format!(
        r#"
        [health]
        details = "always"
        [health.checks.orders-db]
        type = "postgres"
        url = "{pg_url}"
        [health.checks.cache-db]
        type = "sqlite"
        url = "sqlite::memory:"
        probe = "deep"
        "#
    ))
    .unwrap();
    let garrison = garrison::Garrison::from_config(config).unwrap();
    let addr = garrison_workspace::serve_with_peers(
        axum::Router::new()
            .route("/users/{id}", axum::routing::get(|| async { "user" }))
            .layer(garrison.layer()),
    )
    .await;
    for i in 0..3 {
        get(addr, &format!("/users/{i}"), &[]).await;
    }
    garrison.health().refresh().await;
    let deep = get(addr, "/health", &[]).await;
    assert_eq!(
        deep.status, 200,
        "PostgreSQL at {pg_url} (GARRISON_TEST_POSTGRES_URL) or SQLite failed its check; start PostgreSQL with `just services`:\n{}",
        deep.body
    );
    for key in ["orders-db:responseTime", "cache-db:utilization"] {
        assert!(deep.body.contains(key), "{key} missing in {}", deep.body);
    }
    let scrape = get(addr, "/metrics", &[]).await;
    for needle in [
        r#"garrison_health_check_status{check="orders-db",status="pass"} 1"#,
        r#"db_client_connection_max{db_client_connection_pool_name="cache-db"} 2"#,
        r#"http_route="/users/{id}""#,
        "garrison_breaker_state",
        "garrison_trace_traces_total",
    ] {
        assert!(
            scrape.body.contains(needle),
            "{needle} missing in\n{}",
            scrape.body
        );
    }
    promtool_check(&promtool, &scrape.body);
}
