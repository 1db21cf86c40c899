//! Behaviour of `MetricsLayer`, driven through real axum routers and tower services with
//! tokio's paused clock, so every duration is exact.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use garrison_core::{MethodLabel, RouteTable, SharedClock, TokioClock, TraceContext, TraceId};
use garrison_metrics::{Format, MetricsLayer, MetricsRegistry, SeriesSnapshot};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};

fn registry() -> MetricsRegistry {
    MetricsRegistry::builder()
        .clock(SharedClock::new(TokioClock))
        .process_metrics(false)
        .runtime_metrics(false)
        .build()
}

async fn sleep_ms(Path(ms): Path<u64>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done"
}

fn app(registry: &MetricsRegistry) -> Router {
    Router::new()
        .route("/sleep/{ms}", get(sleep_ms))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move { StatusCode::from_u16(code).unwrap() }),
        )
        .route("/stream/{chunks}/{gap_ms}", get(stream))
        .layer(MetricsLayer::new(registry))
}

async fn stream(Path((chunks, gap_ms)): Path<(usize, u64)>) -> Body {
    let s = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        Some((
            Ok::<_, Infallible>(bytes::Bytes::from(vec![b'x'; 100])),
            i + 1,
        ))
    });
    Body::from_stream(s)
}

async fn get_path(app: &Router, path: &str) -> (StatusCode, bytes::Bytes) {
    let resp = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn series<'a>(snap: &'a [SeriesSnapshot], route: &str, status: Option<u16>) -> &'a SeriesSnapshot {
    snap.iter()
        .find(|s| s.route == route && s.status == status)
        .unwrap_or_else(|| panic!("no series for {route} {status:?} in {snap:#?}"))
}

#[tokio::test(start_paused = true)]
async fn bucket_counts_and_quantiles_are_exact_for_known_latencies() {
    let registry = registry();
    let app = app(&registry);
    // 20 requests: the default OTel buckets are 5, 10, 25, 50, 75, 100, 250, 500, 750 ms, 1, 2.5,
    // 5, 7.5, 10 s. 10 ms sits exactly on a bound and must count in le="0.01".
    let latencies_ms = [
        1, 3, 5, 7, 10, 10, 10, 12, 20, 30, 40, 60, 80, 90, 100, 200, 400, 700, 1500, 12_000,
    ];
    for ms in latencies_ms {
        let (status, body) = get_path(&app, &format!("/sleep/{ms}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"done");
    }

    let snap = registry.snapshot();
    assert_eq!(snap.len(), 1, "one series: {snap:#?}");
    let s = series(&snap, "/sleep/{ms}", Some(200));
    assert_eq!(s.method, MethodLabel::Get);
    assert_eq!(s.error_type, None);
    let d = &s.duration;
    //                  5ms 10 25 50 75 100 250 500 750 1s 2.5 5 7.5 10 +Inf
    assert_eq!(
        d.bucket_counts(),
        &[3, 4, 2, 2, 1, 3, 1, 1, 1, 0, 1, 0, 0, 0, 1]
    );
    assert_eq!(d.count(), 20);
    let total_ms: u64 = latencies_ms.iter().sum();
    assert!(
        (d.sum() - total_ms as f64 / 1000.0).abs() < 1e-9,
        "sum {}",
        d.sum()
    );

    // The quantiles Prometheus would compute from these buckets.
    // p50: rank 10 falls in (0.025, 0.05], which holds ranks 10 and 11 → halfway, 0.0375
    let p50 = d.quantile(0.5).unwrap();
    assert!((p50 - 0.0375).abs() < 1e-12, "p50 {p50}");
    // p95: rank 19 falls in (1, 2.5] holding rank 19 alone → 2.5
    assert_eq!(d.quantile(0.95), Some(2.5));
    // p99: rank 19.8 falls in +Inf → the highest finite bound, 10
    assert_eq!(d.quantile(0.99), Some(10.0));

    // The same numbers in the exposition.
    let text = registry.render(Format::Prometheus);
    let labels =
        r#"http_request_method="GET",http_route="/sleep/{ms}",http_response_status_code="200""#;
    for (le, cumulative) in [
        ("0.005", 3),
        ("0.01", 7),
        ("0.025", 9),
        ("0.1", 15),
        ("1", 18),
        ("2.5", 19),
        ("10", 19),
        ("+Inf", 20),
    ] {
        let line = format!(
            "http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}\n"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(text.contains(&format!(
        "http_server_request_duration_seconds_count{{{labels}}} 20\n"
    )));
    assert!(text.contains(&format!(
        "http_server_request_duration_seconds_sum{{{labels}}} 15.278\n"
    )));
}

#[tokio::test(start_paused = true)]
async fn custom_buckets_are_used() {
    let registry = MetricsRegistry::builder()
        .clock(SharedClock::new(TokioClock))
        .duration_buckets(&[0.1, 1.0])
        .build();
    let app = app(&registry);
    for ms in [100, 101, 1000, 1001] {
        get_path(&app, &format!("/sleep/{ms}")).await;
    }
    let snap = registry.snapshot();
    assert_eq!(
        series(&snap, "/sleep/{ms}", Some(200))
            .duration
            .bucket_counts(),
        &[1, 2, 1]
    );
}

#[tokio::test(start_paused = true)]
async fn duration_ends_when_the_streamed_body_ends() {
    let registry = registry();
    let app = app(&registry);
    let resp = app
        .clone()
        .oneshot(Request::get("/stream/3/40").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Headers are out, the body is not: nothing is recorded yet, the request is active.
    assert!(registry.snapshot().iter().all(|s| s.duration.count() == 0));
    assert_eq!(registry.active_requests(MethodLabel::Get), 1);

    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 300);
    let snap = registry.snapshot();
    let s = series(&snap, "/stream/{chunks}/{gap_ms}", Some(200));
    assert_eq!(s.duration.count(), 1);
    assert!(
        (s.duration.sum() - 0.120).abs() < 1e-9,
        "three 40 ms gaps, got {}",
        s.duration.sum()
    );
    assert_eq!(s.response_size.sum(), 300.0);
    assert_eq!(s.error_type, None);
    assert_eq!(registry.active_requests(MethodLabel::Get), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_before_its_response_is_counted_as_cancelled() {
    let registry = registry();
    let app = app(&registry);
    let call = app
        .clone()
        .oneshot(Request::get("/sleep/10000").body(Body::empty()).unwrap());
    let timed_out = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(timed_out.is_err(), "the handler sleeps for 10 s");

    let snap = registry.snapshot();
    assert_eq!(snap.len(), 1);
    let s = &snap[0];
    assert_eq!(s.route, "/sleep/{ms}");
    assert_eq!(s.status, None, "no response was produced");
    assert_eq!(s.error_type.as_deref(), Some("cancelled"));
    assert_eq!(s.duration.count(), 1);
    assert!((s.duration.sum() - 0.3).abs() < 1e-9);
    assert_eq!(registry.active_requests(MethodLabel::Get), 0);

    let text = registry.render(Format::Prometheus);
    assert!(text.contains(
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/sleep/{ms}",error_type="cancelled"} 1"#
    ), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_midway_is_counted_as_cancelled_with_its_status() {
    let registry = registry();
    let app = app(&registry);
    let resp = app
        .clone()
        .oneshot(Request::get("/stream/5/10").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().len(), 100);
    drop(body);

    let snap = registry.snapshot();
    let s = series(&snap, "/stream/{chunks}/{gap_ms}", Some(200));
    assert_eq!(s.error_type.as_deref(), Some("cancelled"));
    assert_eq!(s.response_size.sum(), 100.0);
    assert!((s.duration.sum() - 0.010).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn server_errors_carry_error_type_and_client_errors_do_not() {
    let registry = registry();
    let app = app(&registry);
    for code in [200, 404, 429, 500, 503, 503] {
        let (status, _) = get_path(&app, &format!("/status/{code}")).await;
        assert_eq!(status.as_u16(), code);
    }
    let snap = registry.snapshot();
    let error = |code| {
        series(&snap, "/status/{code}", Some(code))
            .error_type
            .clone()
    };
    assert_eq!(error(200), None);
    assert_eq!(error(404), None);
    assert_eq!(error(429), None);
    assert_eq!(error(500).as_deref(), Some("500"));
    assert_eq!(error(503).as_deref(), Some("503"));
    assert_eq!(
        series(&snap, "/status/{code}", Some(503)).duration.count(),
        2
    );
}

#[tokio::test]
async fn service_errors_are_counted() {
    let registry = registry();
    let mut svc = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(&registry).route_table(RouteTable::from_patterns(["/boom"]).unwrap()),
        )
        .service_fn(|_req: Request<()>| async {
            Err::<http::Response<String>, _>("upstream broke")
        });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("/boom").body(()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, "upstream broke");
    let snap = registry.snapshot();
    assert_eq!(snap[0].route, "/boom");
    // a 500, as the error ratio and the SLO rules count server errors
    assert_eq!(snap[0].status, Some(500));
    assert_eq!(snap[0].error_type.as_deref(), Some("service_error"));
}

#[tokio::test]
async fn a_plain_tower_service_is_labelled_from_the_route_table() {
    let registry = registry();
    let table = RouteTable::from_patterns(["/users/{id}", "/files/{*path}"]).unwrap();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&registry).route_table(table))
        .service_fn(|req: Request<String>| async move {
            Ok::<_, Infallible>(http::Response::new(format!("echo {}", req.into_body())))
        });
    for (path, body) in [
        ("/users/1", "a"),
        ("/users/2", "bb"),
        ("/files/a/b/c", ""),
        ("/other", ""),
    ] {
        let req = Request::post(path)
            .header("content-length", body.len().to_string())
            .body(body.to_owned())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let snap = registry.snapshot();
    let mut routes: Vec<_> = snap
        .iter()
        .map(|s| (s.route.as_str(), s.duration.count()))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        vec![("/files/{*path}", 1), ("/users/{id}", 2), ("unmatched", 1)]
    );
    let users = series(&snap, "/users/{id}", Some(200));
    assert_eq!(users.method, MethodLabel::Post);
    assert_eq!(users.request_size.sum(), 3.0);
    assert_eq!(
        users.response_size.sum(),
        ("echo a".len() + "echo bb".len()) as f64
    );
}

#[tokio::test]
async fn random_paths_and_methods_add_no_series() {
    let registry = registry();
    let app = Router::new()
        .route("/a", get(|| async { "a" }))
        .route("/b/{id}", get(|| async { "b" }).post(|| async { "b" }))
        .layer(MetricsLayer::new(&registry));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let methods = [
        "GET",
        "POST",
        "BREW",
        "PROPFIND",
        "get",
        "X-ANYTHING",
        "DELETE",
        "QUERY",
    ];
    for i in 0..3_000 {
        let r = next();
        let method = if i % 4 == 0 {
            // an invented method every time
            format!("M{r:X}")
        } else {
            methods[(r % methods.len() as u64) as usize].to_owned()
        };
        let path = match r % 5 {
            0 => "/a".to_owned(),
            1 => format!("/b/{r}"),
            2 => format!("/{r:x}/{}", "z".repeat((r % 300) as usize)),
            3 => format!("/b/{r}/deeper"),
            _ => format!("/%2e%2e/{r}?q={r}"),
        };
        let req = Request::builder()
            .method(http::Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let snap = registry.snapshot();
    let total: u64 = snap.iter().map(|s| s.duration.count()).sum();
    assert_eq!(total, 3_000, "every request is counted");
    for s in &snap {
        assert!(
            ["/a", "/b/{id}", "unmatched"].contains(&s.route.as_str()),
            "route {}",
            s.route
        );
    }
    // routes × methods × statuses actually seen stays small: {/a, /b/{id}, unmatched} ×
    // {GET, POST, DELETE, _OTHER} × {200, 404, 405}
    assert!(snap.len() <= 3 * 4 * 3, "{} series", snap.len());
    assert!(snap.iter().any(|s| s.method == MethodLabel::Other));
    assert_eq!(registry.series_dropped(), 0);
}

#[tokio::test]
async fn the_series_cap_is_enforced_and_counted() {
    let registry = MetricsRegistry::builder().max_series(3).build();
    let table = RouteTable::from_patterns((0..10).map(|i| format!("/r{i}"))).unwrap();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&registry).route_table(table))
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        });
    for round in 0..2 {
        for i in 0..10 {
            let resp = svc
                .clone()
                .oneshot(Request::get(format!("/r{i}")).body(()).unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(registry.series_count(), 3, "round {round}");
    }
    assert_eq!(registry.series_dropped(), 14);
    let text = registry.render(Format::Prometheus);
    assert!(
        text.contains("garrison_metrics_series_dropped_total 14\n"),
        "{text}"
    );
    assert!(text.contains("garrison_metrics_series 3\n"));
}

fn traced(trace: Option<TraceContext>) -> impl Fn(Request<Body>) -> Request<Body> + Clone {
    move |mut req: Request<Body>| {
        if let Some(t) = trace {
            req.extensions_mut().insert(t);
        }
        req
    }
}

#[tokio::test(start_paused = true)]
async fn exemplars_link_buckets_to_sampled_traces_only() {
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let unsampled_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let registry = registry();
    let base = Router::new()
        .route("/sleep/{ms}", get(sleep_ms))
        .layer(MetricsLayer::new(&registry));
    for (ms, ctx) in [
        (20u64, Some(TraceContext::sampled(trace_id))),
        (
            3,
            Some(TraceContext {
                trace_id: unsampled_id,
                span_id: None,
                sampled: false,
            }),
        ),
        (400, None),
    ] {
        // A span context set up outside the metrics layer, as the trace layer will.
        let app = base
            .clone()
            .layer(tower::util::MapRequestLayer::new(traced(ctx)));
        let (status, _) = get_path(&app, &format!("/sleep/{ms}")).await;
        assert_eq!(status, StatusCode::OK);
    }

    let om = registry.render(Format::OpenMetrics);
    let labels =
        r#"http_request_method="GET",http_route="/sleep/{ms}",http_response_status_code="200""#;
    let line = |le: &str| {
        om.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no bucket {le} in\n{om}"))
            .to_owned()
    };
    let exemplar = line("0.025");
    assert!(
        exemplar.starts_with(&format!(
            "http_server_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 2 # {{trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"}} 0.02 "
        )),
        "{exemplar}"
    );
    assert!(
        !line("0.005").contains('#'),
        "unsampled trace gives no exemplar"
    );
    assert!(
        !line("0.5").contains('#'),
        "untraced request gives no exemplar"
    );
    assert!(!om.contains("0af7651916cd43dd8448eb211c80319c"));
    assert!(om.ends_with("# EOF\n"));
    // The Prometheus text format has no exemplars.
    assert!(!registry.render(Format::Prometheus).contains("trace_id"));
}

#[test]
fn concurrent_requests_are_counted_exactly() {
    const TASKS: usize = 16;
    const REQUESTS: usize = 500;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let registry = MetricsRegistry::new();
    let app = Router::new()
        .route("/x/{id}", get(|| async { "x" }))
        .route(
            "/y",
            get(|| async {
                tokio::task::yield_now().await;
                "y"
            }),
        )
        .layer(MetricsLayer::new(&registry));
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let app = app.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..REQUESTS {
                    let path = if (t + i) % 2 == 0 {
                        format!("/x/{i}")
                    } else {
                        "/y".to_owned()
                    };
                    let resp = app
                        .clone()
                        .oneshot(Request::get(path).body(Body::empty()).unwrap())
                        .await
                        .unwrap();
                    resp.into_body().collect().await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let snap = registry.snapshot();
    let count = |route: &str| series(&snap, route, Some(200)).duration.count();
    assert_eq!(count("/x/{id}") + count("/y"), (TASKS * REQUESTS) as u64);
    assert_eq!(count("/x/{id}"), (TASKS * REQUESTS / 2) as u64);
    assert_eq!(
        series(&snap, "/y", Some(200)).response_size.sum(),
        (TASKS * REQUESTS / 2) as f64
    );
    assert_eq!(registry.active_requests(MethodLabel::Get), 0);
}

#[tokio::test]
async fn exporter_negotiates_the_format_and_refuses_writes() {
    let registry = registry();
    let app = app(&registry).route_service("/metrics", registry.exporter());
    get_path(&app, "/status/200").await;

    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let resp = app
        .clone()
        .oneshot(
            Request::get("/metrics")
                .header(
                    "accept",
                    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"# EOF\n"));

    let resp = app
        .clone()
        .oneshot(Request::post("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
}

/// A service traced by its own OpenTelemetry layer (no `TraceContext` in the request): the
/// current OpenTelemetry span, when sampled, is the exemplar's trace.
#[cfg(feature = "otel")]
#[tokio::test]
async fn exemplars_come_from_the_current_opentelemetry_span_too() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
    let registry = registry();
    let app = Router::new()
        .route("/sleep/{ms}", get(sleep_ms))
        .layer(MetricsLayer::new(&registry));
    for (trace, flags) in [
        ("4bf92f3577b34da6a3ce929d0e0e4736", TraceFlags::SAMPLED),
        ("0af7651916cd43dd8448eb211c80319c", TraceFlags::default()),
    ] {
        let sc = SpanContext::new(
            opentelemetry::trace::TraceId::from_hex(trace).unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            flags,
            false,
            TraceState::NONE,
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        // the user's layer makes its span current whenever the inner service is polled
        let req = Request::get("/sleep/0").body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).with_context(cx).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let om = registry.render(Format::OpenMetrics);
    assert!(
        om.contains(r#"# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}"#),
        "{om}"
    );
    assert!(!om.contains("0af7651916cd43dd8448eb211c80319c"), "{om}");
}
