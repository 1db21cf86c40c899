//! The registry on tokio's paused clock: refresh intervals, timeouts, criticality, probes
//! that read the cache, shutdown, token gating, logging once per change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_health::{
    check_fn, CheckOptions, CheckResult, Details, HealthLayer, HealthRegistry, Measurement, Status,
};
use garrison_metrics::{Format, MetricsRegistry};
use http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

async fn probe(app: &Router, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/health+json");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

fn counting(counter: &Arc<AtomicU64>) -> impl garrison_health::Check {
    let c = counter.clone();
    check_fn(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            CheckResult::pass()
        }
    })
}

/// Lets spawned refresh tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn checks_run_once_per_interval_whatever_the_probes() {
    let runs = Arc::new(AtomicU64::new(0));
    let health = HealthRegistry::builder().details(Details::Always).build();
    health
        .register(
            "db",
            counting(&runs),
            CheckOptions::readiness().interval(Duration::from_secs(10)),
        )
        .unwrap();
    let app: Router = health.router();
    settle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "first run at registration");

    // a probe storm between two refreshes adds no run
    for _ in 0..1000 {
        let (status, _) = probe(&app, "/health", None).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // each interval adds exactly one
    for k in 1..=5u64 {
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1 + k);
    }
    assert_eq!(health.runs("db"), Some(6));

    // dropping the registry stops the refresh
    drop(app);
    drop(health);
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_cut_off_at_its_timeout_and_liveness_stays_up() {
    let health = HealthRegistry::builder().details(Details::Always).build();
    health
        .register(
            "db",
            check_fn(std::future::pending::<CheckResult>),
            CheckOptions::readiness().timeout(Duration::from_millis(500)),
        )
        .unwrap();
    let app: Router = health.router();

    // before the first result: not ready, but alive
    let (status, body) = probe(&app, "/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["db"][0]["output"], "not checked yet");
    assert_eq!(probe(&app, "/health/live", None).await.0, StatusCode::OK);

    let started = tokio::time::Instant::now();
    health.refresh().await;
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "cut off at the timeout"
    );
    let obs = health.last("db").unwrap();
    assert_eq!(obs.status(), Status::Fail);
    assert_eq!(obs.duration, Duration::from_millis(500));

    let (status, body) = probe(&app, "/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "fail");
    assert_eq!(body["output"], "timed out after 500ms");
    assert_eq!(body["checks"]["db"][0]["status"], "fail");
    assert_eq!(body["checks"]["db"][0]["observedValue"], 500);
    assert_eq!(body["checks"]["db"][0]["observedUnit"], "ms");
    let (status, body) = probe(&app, "/health/live", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "pass");
}

#[tokio::test(start_paused = true)]
async fn criticality_kinds_and_panics() {
    let health = HealthRegistry::builder().details(Details::Always).build();
    let fail = || check_fn(|| async { CheckResult::fail("down") });
    health
        .register("cache", fail(), CheckOptions::readiness().non_critical())
        .unwrap();
    health
        .register("search", fail(), CheckOptions::deep())
        .unwrap();
    health
        .register(
            "loop",
            check_fn(|| async { CheckResult::pass() }),
            CheckOptions::liveness(),
        )
        .unwrap();
    health.refresh().await;
    let app: Router = health.router();

    // a failing non-critical readiness check warns; a deep-only check stays out of readiness
    let (status, body) = probe(&app, "/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "warn");
    assert_eq!(body["checks"]["cache"][0]["status"], "warn");
    assert_eq!(body["checks"]["cache"][0]["output"], "down");
    assert!(body["checks"].get("search").is_none());
    assert!(body["checks"].get("loop").is_none());
    assert_eq!(health.last("cache").unwrap().reported, Status::Fail);

    // the deep route shows every check, and the critical deep one fails it
    let (status, body) = probe(&app, "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["search"][0]["status"], "fail");
    assert_eq!(body["checks"]["loop"][0]["status"], "pass");

    // liveness only sees the liveness check
    let (status, body) = probe(&app, "/health/live", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["checks"].as_object().unwrap().len(), 1);

    // a panicking check is a failure, not a dead refresh task
    health
        .register(
            "panics",
            check_fn(|| async { panic!("boom") }),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let obs = health.last("panics").unwrap();
    assert_eq!(obs.status(), Status::Fail);
    assert_eq!(obs.result.reason(), Some("the check panicked"));
}

#[tokio::test(start_paused = true)]
async fn measurements_are_keyed_component_measurement() {
    let health = HealthRegistry::builder()
        .details(Details::Always)
        .service_id("orders")
        .version("1.4.2")
        .release_id("1.4.2-abc")
        .build();
    health
        .register(
            "postgres",
            check_fn(|| async {
                CheckResult::pass()
                    .measurement(Measurement::new("responseTime").observed(1.25, "ms"))
                    .measurement(
                        Measurement::new("utilization")
                            .observed(85.0, "percent")
                            .warn("17 of 20 connections in use"),
                    )
                    .measurement(
                        Measurement::new("connections")
                            .observed(17u32, "connections")
                            .field("max", 20.0),
                    )
            }),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let app: Router = health.router();
    let (status, body) = probe(&app, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "warn");
    assert_eq!(body["serviceId"], "orders");
    assert_eq!(body["version"], "1.4.2");
    assert_eq!(body["releaseId"], "1.4.2-abc");
    assert_eq!(body["output"], "17 of 20 connections in use");
    let rt = &body["checks"]["postgres:responseTime"][0];
    assert_eq!(rt["observedValue"], 1.25);
    assert_eq!(rt["observedUnit"], "ms");
    assert_eq!(rt["status"], "pass");
    assert!(rt.get("output").is_none());
    let time = rt["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    let util = &body["checks"]["postgres:utilization"][0];
    assert_eq!(util["status"], "warn");
    assert_eq!(util["observedValue"], 85);
    assert_eq!(body["checks"]["postgres:connections"][0]["max"], 20);
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_readiness_only() {
    let health = HealthRegistry::new();
    let app: Router = health.router();
    assert_eq!(probe(&app, "/health/ready", None).await.0, StatusCode::OK);
    health.begin_shutdown();
    let (status, body) = probe(&app, "/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, serde_json::json!({"status": "fail"}));
    assert_eq!(probe(&app, "/health/live", None).await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn details_only_with_the_token_and_secrets_never() {
    let health = HealthRegistry::builder()
        .service_id("orders")
        .version("9.9.9")
        .token("s3cret-token")
        .build();
    health
        .register(
            "postgres",
            check_fn(|| async {
                CheckResult::fail(
                    "cannot connect to postgres://app:hunter2@db.internal:5432/orders (password=hunter2)",
                )
            }),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let app: Router = health.router();

    for token in [
        None,
        Some("wrong"),
        Some("s3cret-toke"),
        Some("s3cret-token2"),
    ] {
        for path in ["/health", "/health/ready", "/health/live"] {
            let resp = app
                .clone()
                .oneshot({
                    let mut r = Request::get(path);
                    if let Some(t) = token {
                        r = r.header("authorization", format!("Bearer {t}"));
                    }
                    r.body(Body::empty()).unwrap()
                })
                .await
                .unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let body = std::str::from_utf8(&body).unwrap();
            assert!(
                body == r#"{"status":"fail"}"# || body == r#"{"status":"pass"}"#,
                "{path} with {token:?} leaked: {body}"
            );
        }
    }

    let (_, body) = probe(&app, "/health", Some("s3cret-token")).await;
    assert_eq!(body["serviceId"], "orders");
    assert_eq!(body["version"], "9.9.9");
    let text = body.to_string();
    assert!(text.contains("postgres://<redacted>"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("db.internal"), "{text}");

    // a registry without a token shows details to nobody, unless told to
    let closed = HealthRegistry::new();
    let app: Router = closed.router();
    let (_, body) = probe(&app, "/health", Some("anything")).await;
    assert_eq!(body, serde_json::json!({"status": "pass"}));
}

#[tokio::test(start_paused = true)]
async fn the_layer_answers_health_paths_and_passes_the_rest() {
    let health = HealthRegistry::builder().details(Details::Always).build();
    let app = Router::new()
        .route("/health/live", axum::routing::post(|| async { "posted" }))
        .route("/orders", get(|| async { "orders" }))
        .layer(HealthLayer::new(&health));
    let call = |method: &str, path: &str| {
        let app = app.clone();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, live) = call("GET", "/health/live").await;
    assert_eq!(status, StatusCode::OK);
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["status"], "pass", "{live}");
    assert_eq!(live["checks"], serde_json::json!({}), "{live}");
    assert_eq!(live["uptime"], 0, "{live}");
    assert_eq!(
        call("GET", "/orders").await,
        (StatusCode::OK, "orders".into())
    );
    assert_eq!(
        call("POST", "/health/live").await,
        (StatusCode::OK, "posted".into())
    );
    assert_eq!(call("GET", "/health/other").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_the_checks() {
    let metrics = MetricsRegistry::new();
    let health = HealthRegistry::new();
    health.metrics(&metrics);
    let flip = Arc::new(AtomicU64::new(0));
    let f = flip.clone();
    health
        .register(
            "queue",
            check_fn(move || {
                let n = f.load(Ordering::SeqCst);
                async move {
                    if n == 0 {
                        CheckResult::pass()
                    } else {
                        CheckResult::fail("stuck")
                    }
                }
            }),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let text = metrics.render(Format::Prometheus);
    assert!(
        text.contains("garrison_health_check_status{check=\"queue\",status=\"pass\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("garrison_health_check_status{check=\"queue\",status=\"fail\"} 0\n"));
    assert!(text.contains("garrison_health_check_duration_seconds{check=\"queue\"} 0\n"));
    flip.store(1, Ordering::SeqCst);
    health.refresh().await;
    let text = metrics.render(Format::Prometheus);
    assert!(text.contains("garrison_health_check_status{check=\"queue\",status=\"fail\"} 1\n"));
    assert!(
        text.contains("garrison_health_check_runs_total{check=\"queue\"} 2\n"),
        "{text}"
    );
}

mod logging {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    pub(super) struct Events(pub(super) Arc<Mutex<Vec<String>>>);

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" || field.name() == "to" {
                self.0.push_str(&format!("{value:?} "));
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "to" {
                self.0.push_str(value);
            }
        }
    }

    impl<S: Subscriber> Layer<S> for Events {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            if event.metadata().target().starts_with("garrison_health") {
                let mut m = Message(String::new());
                event.record(&mut m);
                self.0.lock().unwrap().push(m.0);
            }
        }
    }

    pub(super) fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let sub = tracing_subscriber::registry().with(events.clone());
        let guard = tracing::subscriber::set_default(sub);
        (events, guard)
    }
}

#[tokio::test(start_paused = true)]
async fn status_changes_are_logged_once_not_per_run() {
    let (events, _guard) = logging::capture();
    let health = HealthRegistry::new();
    let state = Arc::new(AtomicU64::new(0));
    let s = state.clone();
    health
        .register(
            "db",
            check_fn(move || {
                let n = s.load(Ordering::SeqCst);
                async move {
                    if n == 0 {
                        CheckResult::pass()
                    } else {
                        CheckResult::fail("down")
                    }
                }
            }),
            CheckOptions::readiness().interval(Duration::from_secs(1)),
        )
        .unwrap();
    let app: Router = health.router();
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        probe(&app, "/health/ready", None).await;
    }
    state.store(1, Ordering::SeqCst);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        probe(&app, "/health/ready", None).await;
    }
    state.store(0, Ordering::SeqCst);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert!(health.runs("db").unwrap() >= 30);
    let logged = events.0.lock().unwrap().clone();
    assert_eq!(logged.len(), 3, "one event per change: {logged:?}");
    assert!(logged[0].contains("passes"), "{logged:?}");
    assert!(logged[1].contains("fails"), "{logged:?}");
    assert!(logged[2].contains("passes"), "{logged:?}");
}

#[tokio::test(start_paused = true)]
async fn on_change_is_told_each_change_of_status_once_with_its_reason() {
    let health = HealthRegistry::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    health.on_change(move |c| {
        log.lock().unwrap().push((
            c.check.to_owned(),
            c.from,
            c.to,
            c.reason.map(str::to_owned),
        ));
    });
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = up.clone();
    health
        .register(
            "queue",
            check_fn(move || {
                let up = flag.load(Ordering::Relaxed);
                async move {
                    if up {
                        CheckResult::pass()
                    } else {
                        CheckResult::fail("full")
                    }
                }
            }),
            CheckOptions::default(),
        )
        .unwrap();
    health.refresh().await;
    health.refresh().await; // no change: not told again
    up.store(false, Ordering::Relaxed);
    health.refresh().await;
    up.store(true, Ordering::Relaxed);
    health.refresh().await;
    let q = || "queue".to_owned();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (q(), None, Status::Pass, None),
            (
                q(),
                Some(Status::Pass),
                Status::Fail,
                Some("full".to_owned())
            ),
            (q(), Some(Status::Fail), Status::Pass, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_detailed_report_says_when_it_was_made_and_how_long_the_service_has_been_up() {
    let health = HealthRegistry::builder().token("t0ken").build();
    tokio::time::advance(Duration::from_secs(90)).await;
    let app = Router::new().merge(health.router());
    let (status, body) = probe(&app, "/health", Some("t0ken")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["uptime"], 90, "{body}");
    assert_eq!(health.uptime(), Duration::from_secs(90));
    let time = body["time"].as_str().unwrap();
    assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    // without the token: the status only
    let (_, minimal) = probe(&app, "/health", None).await;
    assert_eq!(minimal, serde_json::json!({"status": "pass"}));
}
