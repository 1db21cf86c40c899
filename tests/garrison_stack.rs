//! The whole garrison, built from TOML, over real sockets: one request per behaviour, and
//! the order of the layers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use garrison::garrison_trace::{Sampler, Tracer, Value};
use garrison::{Garrison, GarrisonConfig};
use garrison_workspace::{get as fetch, send, serve_with_peers, MemorySink};
use http::Method;

#[allow(dead_code)]
#[path = "../examples/axum_app.rs"]
mod axum_app;

#[allow(dead_code)]
#[path = "../examples/hyper_service.rs"]
mod hyper_service;

const STACK: &str = r#"
[service]
name = "stack-test"

[trace]
sampler = "always"
trace_response = true

[ratelimit.routes]
"/auth/login" = "auth"

[breaker.profiles.fragile]
base = "critical"
minimum_calls = 2

[breaker.routes]
"/flaky/{id}" = "fragile"
"#;

/// The test service: it counts the calls that reach it.
fn service(calls: Arc<AtomicUsize>) -> Router {
    let c = calls.clone();
    let c2 = calls.clone();
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move {
                // the trace the stack joined, as the handler sees it
                let trace = garrison::garrison_trace::current()
                    .map(|ctx| {
                        let mut buf = [0; 32];
                        ctx.trace_id.to_hex(&mut buf).to_owned()
                    })
                    .unwrap_or_default();
                format!("user {id} in trace {trace}")
            }),
        )
        .route(
            "/auth/login",
            post(move || async move {
                c.fetch_add(1, Ordering::Relaxed);
                "welcome"
            }),
        )
        .route(
            "/flaky/{id}",
            get(move || async move {
                c2.fetch_add(1, Ordering::Relaxed);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
}

async fn stack(toml: &str) -> (Garrison, std::net::SocketAddr, Arc<AtomicUsize>) {
    let garrison = Garrison::from_config(GarrisonConfig::from_toml(toml).unwrap()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = serve_with_peers(service(calls.clone()).layer(garrison.layer())).await;
    (garrison, addr, calls)
}

fn count_line(scrape: &str, labels: &str) -> Option<u64> {
    let prefix = format!("http_server_request_duration_seconds_count{{{labels}}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_are_recorded_with_the_route_template() {
    let (_g, addr, _) = stack(STACK).await;
    for id in [7, 8, 9] {
        assert_eq!(fetch(addr, &format!("/users/{id}"), &[]).await.status, 200);
    }
    let scrape = fetch(addr, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200);
    assert_eq!(
        count_line(
            &scrape.body,
            r#"http_request_method="GET",http_route="/users/{id}",http_response_status_code="200""#
        ),
        Some(3),
        "{}",
        scrape.body
    );
    assert!(
        !scrape.body.contains("/users/7"),
        "a raw path became a label"
    );
    // every layer's families are in the one registry
    for family in [
        "garrison_ratelimit_decisions_total",
        "garrison_breaker_state",
        "garrison_trace_traces_total",
        "garrison_health_check_status",
    ] {
        assert!(scrape.body.contains(family), "{family} missing");
    }
}

#[tokio::test]
async fn the_auth_route_answers_429_with_headers_and_the_service_is_not_called() {
    let (_g, addr, calls) = stack(STACK).await;
    for i in 0..5 {
        let r = send(addr, Method::POST, "/auth/login", &[]).await;
        assert_eq!(r.status, 200, "attempt {i}");
        assert_eq!(r.headers["x-ratelimit-remaining"], (4 - i).to_string());
    }
    let refused = send(addr, Method::POST, "/auth/login", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["ratelimit-policy"], r#""auth";q=5;w=900"#);
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=180).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.headers["cache-control"], "no-store");
    assert!(
        refused.body.contains(r#""policy":"auth""#),
        "{}",
        refused.body
    );
    assert_eq!(calls.load(Ordering::Relaxed), 5);
    // other routes are under the general policy, untouched
    let other = fetch(addr, "/users/1", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["ratelimit-policy"], r#""general";q=100;w=60"#);
}

#[tokio::test]
async fn an_open_breaker_answers_503_and_health_shows_it() {
    let (garrison, addr, calls) =
        stack(&format!("{STACK}\n[health]\ndetails = \"always\"\n")).await;
    for _ in 0..2 {
        assert_eq!(fetch(addr, "/flaky/1", &[]).await.status, 500);
    }
    let open = fetch(addr, "/flaky/2", &[]).await;
    assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = open.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((10..=11).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "an open breaker called the service"
    );
    // the route's own profile opened it; other routes have their own breakers
    assert!(garrison.breakers().get("server:/flaky/{id}").is_some());
    assert_eq!(fetch(addr, "/users/1", &[]).await.status, 200);

    garrison.health().refresh().await;
    let deep = fetch(addr, "/health", &[]).await;
    assert_eq!(deep.status, 200, "an open breaker is a warn, not a failure");
    assert!(deep.body.contains(r#""status":"warn""#), "{}", deep.body);
    assert!(deep.body.contains("server:/flaky/{id}"), "{}", deep.body);
    assert_eq!(fetch(addr, "/health/ready", &[]).await.status, 200);
}

#[tokio::test]
async fn health_routes_and_scrapes_are_answered_before_the_limiter() {
    let (garrison, addr, _) = stack(
        "[ratelimit]\nkey = \"global\"\n[ratelimit.policies.general]\nlimit = 1\nperiod = \"1h\"\n",
    )
    .await;
    assert_eq!(fetch(addr, "/users/1", &[]).await.status, 200);
    assert_eq!(fetch(addr, "/users/1", &[]).await.status, 429);
    for _ in 0..20 {
        for path in ["/health/live", "/health/ready", "/health", "/metrics"] {
            let r = fetch(addr, path, &[]).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(
                !r.headers.contains_key("ratelimit"),
                "{path} went through the limiter"
            );
        }
    }
    let (allowed, limited, _) = garrison
        .rate_limiter()
        .unwrap()
        .decisions("general")
        .unwrap();
    assert_eq!((allowed, limited), (1, 1));
}

#[tokio::test]
async fn an_incoming_traceparent_is_joined() {
    let (_g, addr, _) = stack(STACK).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = fetch(
        addr,
        "/users/5",
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )
    .await;
    assert_eq!(r.body, format!("user 5 in trace {trace}"));
    let back = r.headers["traceresponse"].to_str().unwrap();
    assert!(back.starts_with(&format!("00-{trace}-")), "{back}");
    assert!(
        !back.contains("00f067aa0ba902b7"),
        "the server span is a new span"
    );
    assert!(back.ends_with("-01"), "{back}");
    assert_eq!(r.headers["x-request-id"].len(), 32);
}

#[tokio::test]
async fn a_rate_limited_request_is_still_measured_and_traced() {
    let sink = MemorySink::default();
    let tracer = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(sink.clone())
        .flush_every(Duration::from_millis(5))
        .build();
    let garrison = Garrison::builder()
        .config(GarrisonConfig::from_toml(STACK).unwrap())
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = serve_with_peers(service(calls).layer(garrison.layer())).await;
    for _ in 0..6 {
        send(addr, Method::POST, "/auth/login", &[]).await;
    }
    let scrape = fetch(addr, "/metrics", &[]).await.body;
    let refused =
        r#"http_request_method="POST",http_route="/auth/login",http_response_status_code="429""#;
    assert_eq!(count_line(&scrape, refused), Some(1), "{scrape}");

    // wait for the exporter (no timing is asserted: only that the span arrives)
    for _ in 0..2000 {
        if tracer.exported() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spans = sink.0.lock().unwrap().clone();
    let span_429: Vec<_> = spans
        .iter()
        .filter(|s| s.attribute("http.response.status_code") == Some(&Value::Int(429)))
        .collect();
    assert_eq!(span_429.len(), 1, "{spans:#?}");
    assert_eq!(span_429[0].name, "POST /auth/login");
}

#[tokio::test]
async fn parts_turned_off_are_not_in_the_path() {
    let (_g, addr, _) = stack(
        "[ratelimit]\nenabled = false\n[trace]\nenabled = false\n[metrics]\npath = \"\"\n[health]\nenabled = false\n",
    )
    .await;
    let r = fetch(addr, "/users/1", &[]).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("ratelimit"));
    assert!(!r.headers.contains_key("x-request-id"));
    assert_eq!(fetch(addr, "/metrics", &[]).await.status, 404);
    assert_eq!(fetch(addr, "/health/live", &[]).await.status, 404);
}

#[tokio::test]
async fn the_axum_example_serves_its_three_route_groups_behind_the_stack() {
    let garrison =
        Garrison::from_config(GarrisonConfig::from_toml(axum_app::CONFIG).unwrap()).unwrap();
    let addr = serve_with_peers(axum_app::app(&garrison)).await;

    let product = fetch(addr, "/api/products/7", &[]).await;
    assert_eq!(product.body, "product 7\n");
    assert_eq!(
        product.headers["ratelimit-policy"],
        r#""general";q=100;w=60"#
    );
    let upload = send(addr, Method::POST, "/uploads/cat.png", &[]).await;
    assert_eq!(upload.headers["ratelimit-policy"], r#""upload";q=10;w=300"#);
    for _ in 0..5 {
        assert_eq!(
            send(addr, Method::POST, "/auth/login", &[]).await.status,
            200
        );
    }
    assert_eq!(
        send(addr, Method::POST, "/auth/login", &[]).await.status,
        429
    );
    // a policy's bucket is per client, not per route: guessing passwords on `register`
    // spends the same budget
    assert_eq!(
        send(addr, Method::POST, "/auth/register", &[]).await.status,
        429
    );
    // the database profile opens after 5 calls with half failing
    for _ in 0..5 {
        assert_eq!(fetch(addr, "/api/orders/0", &[]).await.status, 500);
    }
    assert_eq!(fetch(addr, "/api/orders/1", &[]).await.status, 503);
    assert_eq!(fetch(addr, "/api/products", &[]).await.status, 200);

    let scrape = fetch(addr, "/metrics", &[]).await.body;
    for labels in [
        r#"http_request_method="GET",http_route="/api/orders/{id}",http_response_status_code="503",error_type="503""#,
        r#"http_request_method="POST",http_route="/auth/login",http_response_status_code="429""#,
    ] {
        assert_eq!(
            count_line(&scrape, labels),
            Some(1),
            "{labels} in\n{scrape}"
        );
    }
    assert_eq!(fetch(addr, "/health/ready", &[]).await.status, 200);
}

#[tokio::test]
async fn the_hyper_example_names_routes_from_its_table() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let garrison =
        Garrison::from_config(GarrisonConfig::from_toml(hyper_service::CONFIG).unwrap()).unwrap();
    tokio::spawn(hyper_service::serve(listener, garrison.clone()));

    let item = fetch(
        addr,
        "/items/3",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    assert_eq!(item.body, "item 3\n");
    assert_eq!(item.headers["ratelimit-policy"], r#""items";q=50;w=1"#);
    assert!(item.headers.contains_key("x-request-id"));
    assert_eq!(fetch(addr, "/nowhere/else", &[]).await.status, 404);
    let scrape = fetch(addr, "/metrics", &[]).await.body;
    for labels in [
        r#"http_request_method="GET",http_route="/items/{id}",http_response_status_code="200""#,
        r#"http_request_method="GET",http_route="unmatched",http_response_status_code="404""#,
    ] {
        assert_eq!(
            count_line(&scrape, labels),
            Some(1),
            "{labels} in\n{scrape}"
        );
    }
    let health = fetch(addr, "/health/live", &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.headers["content-type"], "application/health+json");
}
