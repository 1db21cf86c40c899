//! The admission layer over real sockets: under overload, critical requests keep a bounded
//! wait while batch requests are shed with 503; a shed request never reaches the service;
//! priorities from routes, extensions and trusted callers' headers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get as route;
use axum::Router;
use garrison_admission::{Admission, AdmissionLayer, Priority};
use garrison_metrics::{Format, MetricsRegistry};
use garrison_workspace::{get, serve_with_peers};

/// A handler that answers once `release` sends `true`: it holds its slot until then.
fn gated() -> (
    tokio::sync::watch::Sender<bool>,
    axum::routing::MethodRouter,
) {
    let (release, gate) = tokio::sync::watch::channel(false);
    let handler = route(move || async move {
        let mut gate = gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        "slow"
    });
    (release, handler)
}

/// The share of `priority`'s waits at or under `bound` seconds, from the scrape.
fn share_within(scrape: &str, priority: &str, bound: &str) -> f64 {
    let value = |le: &str| -> f64 {
        let key = format!(
            "garrison_admission_wait_seconds_bucket{{priority=\"{priority}\",le=\"{le}\"}} "
        );
        let line = scrape
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("{key} in\n{scrape}"));
        line[key.len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let total = value("+Inf");
    if total == 0.0 {
        1.0
    } else {
        value(bound) / total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_critical_requests_keep_a_bounded_wait_while_batch_is_shed() {
    let metrics = MetricsRegistry::new();
    let admission = Admission::builder()
        .max_in_flight(4)
        .max_queue(16)
        .metrics(&metrics)
        .build()
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let work = |served: Arc<AtomicUsize>| {
        move || async move {
            // the saturated resource: 4 slots of 20 ms each, 200 requests a second at most
            tokio::time::sleep(Duration::from_millis(20)).await;
            served.fetch_add(1, Ordering::Relaxed);
            "done"
        }
    };
    let app = Router::new()
        .route("/checkout", route(work(served.clone())))
        .route("/report", route(work(served.clone())))
        .layer(
            AdmissionLayer::new(admission.clone())
                .route("/checkout", Priority::Critical)
                .route("/report", Priority::Batch),
        );
    let addr = serve_with_peers(app).await;

    // 48 batch clients and 4 critical clients in closed loops: far more than 200/s offered
    let client = |path: &'static str, rounds: usize| {
        tokio::spawn(async move {
            let mut statuses = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let r = get(addr, path, &[]).await;
                if r.status == 503 {
                    assert_eq!(r.headers["retry-after"], "1");
                    assert!(r.body.contains("\"reason\""), "{}", r.body);
                }
                statuses.push(r.status.as_u16());
            }
            statuses
        })
    };
    let batch: Vec<_> = (0..48).map(|_| client("/report", 12)).collect();
    let critical: Vec<_> = (0..4).map(|_| client("/checkout", 12)).collect();
    let mut critical_statuses = Vec::new();
    for c in critical {
        critical_statuses.extend(c.await.unwrap());
    }
    let mut batch_statuses = Vec::new();
    for b in batch {
        batch_statuses.extend(b.await.unwrap());
    }

    assert!(
        critical_statuses.iter().all(|s| *s == 200),
        "every critical request served: {critical_statuses:?}"
    );
    let batch_shed = batch_statuses.iter().filter(|s| **s == 503).count();
    assert!(batch_shed > 0, "batch requests are shed under overload");
    assert!(
        batch_statuses.contains(&200),
        "batch still gets what is left"
    );
    let (admitted, shed) = admission.counts();
    assert_eq!(shed[Priority::Critical.index()], [0, 0, 0, 0]);
    assert_eq!(
        shed[Priority::Batch.index()].iter().sum::<u64>(),
        batch_shed as u64
    );
    // the service saw only what was admitted
    assert_eq!(
        served.load(Ordering::Relaxed) as u64,
        admitted.iter().sum::<u64>()
    );
    // critical waits stay far below their 5 s timeout: at least 99% within 250 ms, where a
    // batch request waits out its own 250 ms timeout or is evicted
    let scrape = metrics.render(Format::Prometheus);
    let within = share_within(&scrape, "critical", "0.25");
    assert!(
        within >= 0.99,
        "{within} of critical waits within 250 ms\n{scrape}"
    );
    assert_eq!(admission.in_flight(), 0);
    assert_eq!(admission.queued(), 0);
}

#[tokio::test]
async fn a_shed_request_gets_503_and_never_reaches_the_service() {
    let admission = Admission::builder()
        .max_in_flight(1)
        .max_queue(0)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, slow) = gated();
    let app = Router::new()
        .route("/slow", slow)
        .route(
            "/fast",
            route({
                let calls = calls.clone();
                move || async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    "fast"
                }
            }),
        )
        .layer(AdmissionLayer::new(admission.clone()).retry_after(3));
    let addr = serve_with_peers(app).await;
    let slow = tokio::spawn(get(addr, "/slow", &[]));
    while admission.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let r = get(addr, "/fast", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.body,
        r#"{"error":"overloaded","reason":"queue_full","priority":"normal","retry_after_seconds":3}"#
    );
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    release.send(true).unwrap();
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(get(addr, "/fast", &[]).await.status, 200);
}

/// The priority each request is admitted with, as the service sees it.
async fn serve_priorities(layer: AdmissionLayer) -> SocketAddr {
    let app = Router::new()
        .route("/reports/{id}", route(|| async { "report" }))
        .route("/other", route(|| async { "other" }))
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(
            |mut req: axum::extract::Request| {
                if req.headers().contains_key("x-auth-admin") {
                    req.extensions_mut().insert(Priority::Critical);
                }
                req
            },
        ));
    serve_with_peers(app).await
}

#[tokio::test]
async fn priorities_come_from_extensions_then_trusted_headers_then_routes() {
    let run = |layer: AdmissionLayer,
               path: &'static str,
               headers: Vec<(&'static str, &'static str)>| async move {
        let admission = layer.admission().clone();
        let addr = serve_priorities(layer).await;
        assert_eq!(get(addr, path, &headers).await.status, 200);
        let (admitted, _) = admission.counts();
        Priority::ALL
            .into_iter()
            .find(|p| admitted[p.index()] == 1)
            .unwrap()
    };
    let layer = || {
        AdmissionLayer::new(Admission::builder().build().unwrap())
            .route("/reports/{id}", Priority::Batch)
            .default_priority(Priority::High)
    };
    assert_eq!(run(layer(), "/reports/7", vec![]).await, Priority::Batch);
    assert_eq!(run(layer(), "/other", vec![]).await, Priority::High);
    // the header of an untrusted caller changes nothing
    assert_eq!(
        run(layer(), "/reports/7", vec![("x-priority", "critical")]).await,
        Priority::Batch
    );
    let trusted = || layer().trusted_callers(["127.0.0.1/32".parse().unwrap()]);
    assert_eq!(
        run(trusted(), "/reports/7", vec![("x-priority", "critical")]).await,
        Priority::Critical
    );
    // a bad value is ignored, not an error
    assert_eq!(
        run(trusted(), "/reports/7", vec![("x-priority", "urgent!")]).await,
        Priority::Batch
    );
    // an extension from the auth layer wins over all
    assert_eq!(
        run(
            trusted(),
            "/reports/7",
            vec![("x-priority", "low"), ("x-auth-admin", "1")]
        )
        .await,
        Priority::Critical
    );
}

/// In the whole stack, admission sits between the rate limiter and the breakers: a shed
/// request is measured (a 503 in the metrics), a rate-limited one never reaches the queue,
/// health probes pass while the service is saturated, and the breaker counts only what the
/// service answered.
#[tokio::test]
async fn in_the_whole_stack_admission_sits_between_the_rate_limiter_and_the_breakers() {
    use garrison::{Garrison, GarrisonConfig};
    let garrison = Garrison::from_config(
        GarrisonConfig::from_toml(
            r#"
            [ratelimit.policies.tight]
            limit = 1
            period = "1h"
            [ratelimit.routes]
            "/limited" = "tight"
            [admission]
            enabled = true
            max_in_flight = 1
            max_queue = 0
            [admission.routes]
            "/slow" = "critical"
            [breaker]
            per_route = false
            "#,
        )
        .unwrap(),
    )
    .unwrap();
    let (release, slow) = gated();
    let app = Router::new()
        .route("/slow", slow)
        .route("/fast", route(|| async { "fast" }))
        .route("/limited", route(|| async { "limited" }))
        .layer(garrison.layer());
    let addr = serve_with_peers(app).await;
    let admission = garrison.admission().expect("enabled").clone();

    assert_eq!(get(addr, "/limited", &[]).await.status, 200);
    let slow = tokio::spawn(get(addr, "/slow", &[]));
    while admission.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let shed = get(addr, "/fast", &[]).await;
    assert_eq!(shed.status, 503);
    assert!(shed.body.contains("overloaded"), "{}", shed.body);
    // the limiter answers first: its 429 does not need a slot
    assert_eq!(get(addr, "/limited", &[]).await.status, 429);
    // probes and scrapes are answered above both
    assert_eq!(get(addr, "/health/live", &[]).await.status, 200);
    let scrape = get(addr, "/metrics", &[]).await.body;
    assert!(
        scrape.contains(r#"http_route="/fast",http_response_status_code="503""#),
        "the shed request is measured:\n{scrape}"
    );
    assert!(
        scrape
            .contains(r#"garrison_admission_shed_total{priority="normal",reason="queue_full"} 1"#),
        "{scrape}"
    );
    release.send(true).unwrap();
    assert_eq!(slow.await.unwrap().status, 200);
    // the breaker saw the two calls the service answered, not the shed one
    let calls: u64 = garrison
        .breakers()
        .get("server")
        .expect("the service's breaker")
        .calls()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(calls, 2);
    let (admitted, shed) = admission.counts();
    assert_eq!(admitted[Priority::Critical.index()], 1);
    assert_eq!(shed[Priority::Normal.index()], [1, 0, 0, 0]);
    let deep = get(addr, "/health", &[]).await;
    assert_eq!(deep.status, 200);
}
