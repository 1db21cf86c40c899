//! The breaker as a tower layer: exact half-open admission under concurrency, and a real
//! upstream over sockets that fails, is cut off, and recovers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use garrison_breaker::{BreakerRegistry, CircuitBreakerLayer, State};
use garrison_core::{ManualClock, SharedClock};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;
use common::config;

#[test]
fn half_open_lets_exactly_the_permitted_calls_through_under_concurrency() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..200 {
            let clock = Arc::new(ManualClock::new());
            let breakers = BreakerRegistry::with_clock(SharedClock::from_arc(clock.clone()));
            let breaker = breakers.breaker("dep", config());
            // trip it, then let the wait pass: the next calls race for 3 probe slots
            for _ in 0..4 {
                breaker
                    .try_acquire()
                    .unwrap()
                    .record(garrison_breaker::CallOutcome::Failure);
            }
            clock.advance(Duration::from_secs(30));

            let reached = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let (r, g) = (reached.clone(), gate.clone());
            let app = Router::new()
                .route(
                    "/",
                    get(move || {
                        let (r, g) = (r.clone(), g.clone());
                        async move {
                            r.fetch_add(1, Ordering::SeqCst);
                            // hold the probe until every call has been tried
                            let _ = g.acquire().await.map(|p| p.forget());
                            "ok"
                        }
                    }),
                )
                .layer(CircuitBreakerLayer::new(&breakers, "dep", config()));
            let barrier = Arc::new(tokio::sync::Barrier::new(64));
            let calls: Vec<_> = (0..64)
                .map(|_| {
                    let (app, barrier) = (app.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let resp = app
                            .oneshot(Request::get("/").body(Body::empty()).unwrap())
                            .await
                            .unwrap();
                        resp.status()
                    })
                })
                .collect();
            // Wait (bounded) until every call reached the handler or was rejected, then let
            // the held probes finish.
            tokio::time::timeout(Duration::from_secs(10), async {
                while reached.load(Ordering::SeqCst) + (breaker.snapshot().calls[3].1 as usize) < 64
                {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("round {round}: calls neither admitted nor rejected"));
            gate.add_permits(64);
            let mut ok = 0;
            let mut rejected = 0;
            for c in calls {
                match c.await.unwrap() {
                    StatusCode::OK => ok += 1,
                    StatusCode::SERVICE_UNAVAILABLE => rejected += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            assert_eq!(
                reached.load(Ordering::SeqCst),
                3,
                "round {round}: exactly 3 probes"
            );
            assert_eq!((ok, rejected), (3, 61), "round {round}");
            assert_eq!(
                breaker.state(),
                State::Closed,
                "round {round}: 3 good probes close it"
            );
        }
    });
}

#[tokio::test]
async fn a_failing_upstream_over_sockets_is_cut_off_and_recovers() {
    // The upstream: a real server whose health we switch.
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, n) = (healthy.clone(), hits.clone());
    let upstream = Router::new().route(
        "/data",
        get(move || {
            let (h, n) = (h.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                if h.load(Ordering::SeqCst) {
                    (StatusCode::OK, "fresh data")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });

    // The guarded service: proxies GET /data to the upstream over a real connection.
    let clock = Arc::new(ManualClock::new());
    let breakers = BreakerRegistry::with_clock(SharedClock::from_arc(clock.clone()));
    let client = hyper_client();
    let app = Router::new()
        .route(
            "/data",
            get(move || {
                let client = client.clone();
                async move {
                    let resp = client
                        .request(
                            Request::get(format!("http://{upstream_addr}/data"))
                                .body(Body::empty())
                                .unwrap(),
                        )
                        .await
                        .unwrap();
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    (status, body)
                }
            }),
        )
        .layer(CircuitBreakerLayer::new(&breakers, "upstream", config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let front = hyper_client();
    let get = |front: hyper_util::client::legacy::Client<_, Body>| async move {
        let resp = front
            .request(
                Request::get(format!("http://{addr}/data"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    };

    assert_eq!(get(front.clone()).await.0, StatusCode::OK);
    healthy.store(false, Ordering::SeqCst);
    // 1 success and 3 failures: 75% of the 4 calls the window needs
    for _ in 0..3 {
        assert_eq!(
            get(front.clone()).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let before = hits.load(Ordering::SeqCst);
    let (status, headers, body) = get(front.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"error":"circuit_open","breaker":"upstream","state":"open","retry_after_seconds":30}"#
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "the upstream was not called"
    );

    // The upstream recovers; after the wait, three probes close the breaker.
    healthy.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(30));
    for _ in 0..3 {
        assert_eq!(get(front.clone()).await.0, StatusCode::OK);
    }
    assert_eq!(breakers.get("upstream").unwrap().state(), State::Closed);
    assert_eq!(get(front.clone()).await.2, "fresh data");
}

fn hyper_client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn per_route_breakers_open_independently() {
    let breakers = BreakerRegistry::new();
    let app = Router::new()
        .route("/good/{id}", get(|| async { "ok" }))
        .route("/bad/{id}", get(|| async { StatusCode::BAD_GATEWAY }))
        .layer(
            CircuitBreakerLayer::new(&breakers, "api", config())
                .per_route(garrison_core::RouteResolver::new(), 100),
        );
    let status = |path: String| {
        let app = app.clone();
        async move {
            app.oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..4 {
        assert_eq!(status(format!("/bad/{i}")).await, StatusCode::BAD_GATEWAY);
        assert_eq!(status(format!("/good/{i}")).await, StatusCode::OK);
    }
    assert_eq!(
        status("/bad/9".into()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(status("/good/9".into()).await, StatusCode::OK);
    assert_eq!(breakers.get("api:/bad/{id}").unwrap().state(), State::Open);
    assert_eq!(
        breakers.get("api:/good/{id}").unwrap().state(),
        State::Closed
    );
    assert!(breakers.any_open());
}

#[tokio::test]
async fn a_route_config_replaces_the_layer_config_on_its_route_only() {
    let breakers = BreakerRegistry::new();
    // the layer's config opens after 4 calls; `/lenient/{id}` needs 100 calls seen first
    let app = Router::new()
        .route("/strict/{id}", get(|| async { StatusCode::BAD_GATEWAY }))
        .route("/lenient/{id}", get(|| async { StatusCode::BAD_GATEWAY }))
        .layer(
            CircuitBreakerLayer::new(&breakers, "api", config())
                .per_route(garrison_core::RouteResolver::new(), 100)
                .route_config("/lenient/{id}", garrison_breaker::BreakerConfig::default()),
        );
    let status = |path: String| {
        let app = app.clone();
        async move {
            app.oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..10 {
        status(format!("/strict/{i}")).await;
        assert_eq!(
            status(format!("/lenient/{i}")).await,
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(
        breakers.get("api:/strict/{id}").unwrap().state(),
        State::Open
    );
    assert_eq!(
        breakers.get("api:/lenient/{id}").unwrap().state(),
        State::Closed
    );
}

#[tokio::test]
async fn a_fallback_replaces_the_json_rejection() {
    let breakers = BreakerRegistry::new();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        CircuitBreakerLayer::new(&breakers, "dep", config()).fallback(|name, r| {
            let mut resp = http::Response::new(bytes::Bytes::from(format!("{name} is resting")));
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut()
                .insert("x-breaker-state", r.state.as_str().parse().unwrap());
            resp
        }),
    );
    breakers.force_open("dep").unwrap();
    let resp = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-breaker-state"], "forced_open");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"dep is resting");
}

#[tokio::test]
async fn per_host_breakers_are_capped_against_hostile_hosts() {
    let breakers = BreakerRegistry::new();
    let app = Router::new()
        .route("/", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .layer(CircuitBreakerLayer::new(&breakers, "up", config()).per_host(2));
    for host in ["a.internal", "b.internal", "evil1", "evil2", "evil3"] {
        let req = Request::get("/")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap();
    }
    let mut names: Vec<String> = breakers.list().into_iter().map(|b| b.name).collect();
    names.sort();
    assert_eq!(names, ["up", "up:_other", "up:a.internal", "up:b.internal"]);
    let other = breakers.get("up:_other").unwrap().snapshot();
    assert_eq!(
        other.window.calls, 3,
        "the three hostile hosts share one breaker"
    );
}
