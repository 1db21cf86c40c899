//! Sampling: parent-based ratios, error-biased tail sampling with its statistical share, and
//! the memory bounds of held spans.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use garrison_core::{SharedClock, TokioClock};
use garrison_trace::{
    BoxFuture, DropReason, PropagateLayer, Sampler, SpanKind, SpanRecord, SpanSink, TraceLayer,
    Tracer, Value,
};
use http::Request;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<SpanRecord>>>);

impl SpanSink for Memory {
    fn export(&self, batch: Vec<SpanRecord>) -> BoxFuture<'_, Result<(), String>> {
        self.0.lock().unwrap().extend(batch);
        Box::pin(async { Ok(()) })
    }
}

impl Memory {
    async fn wait_for(&self, tracer: &Tracer, n: u64) -> Vec<SpanRecord> {
        for _ in 0..10_000 {
            if tracer.exported() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(tracer.exported(), n);
        self.0.lock().unwrap().clone()
    }
}

fn tracer(sampler: Sampler, sink: &Memory) -> Tracer {
    Tracer::builder()
        .sampler(sampler)
        .sink(sink.clone())
        .queue(100_000)
        .flush_every(Duration::from_millis(1))
        .build()
}

async fn get_status(app: &Router, path: &str, traceparent: Option<&str>) -> StatusCode {
    let mut r = Request::get(path);
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let resp = app
        .clone()
        .oneshot(r.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    status
}

fn app(tracer: &Tracer) -> Router {
    Router::new()
        .route(
            "/n/{i}",
            get(|Path(i): Path<u32>| async move {
                if i % 4 == 0 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "slow"
            }),
        )
        .layer(TraceLayer::new(tracer))
}

#[tokio::test]
async fn error_biased_keeps_every_error_and_its_share_of_the_rest() {
    let sink = Memory::default();
    let t = tracer(
        Sampler::ErrorBiased {
            ratio: 0.1,
            slow: Duration::from_secs(1),
        },
        &sink,
    );
    let app = app(&t);
    let n = 4000u32;
    for i in 0..n {
        get_status(&app, &format!("/n/{i}"), None).await;
    }
    let (kept, discarded) = t.traces();
    assert_eq!(kept + discarded, u64::from(n));
    let spans = sink.wait_for(&t, kept).await;
    let errors = spans.iter().filter(|s| s.error.is_some()).count();
    assert_eq!(errors, 1000, "every 5xx trace is exported");
    for s in spans.iter().filter(|s| s.error.is_some()) {
        assert_eq!(s.attribute("error.type"), Some(&Value::Str("500".into())));
    }
    // successes: 3000 at 10%: mean 300, standard deviation 16.4; ±5 sd
    let ok = spans.len() - errors;
    assert!(
        (218..=382).contains(&ok),
        "kept {ok} of 3000 successes at 10%"
    );
}

#[tokio::test(start_paused = true)]
async fn error_biased_keeps_slow_requests_by_the_tracer_clock() {
    let sink = Memory::default();
    let t = Tracer::builder()
        .sampler(Sampler::ErrorBiased {
            ratio: 0.0,
            slow: Duration::from_secs(1),
        })
        .sink(sink.clone())
        .clock(SharedClock::new(TokioClock))
        .flush_every(Duration::from_millis(1))
        .build();
    let app = app(&t);
    assert_eq!(get_status(&app, "/slow", None).await, StatusCode::OK);
    assert_eq!(get_status(&app, "/n/1", None).await, StatusCode::OK);
    assert_eq!(t.traces(), (1, 1), "the slow one kept, the fast one not");
    let spans = sink.wait_for(&t, 1).await;
    assert_eq!(spans[0].name, "GET /slow");
}

#[tokio::test]
async fn parent_based_ratio_follows_the_caller() {
    let sink = Memory::default();
    let t = tracer(Sampler::Ratio(0.0), &sink);
    let router = app(&t);
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-00";
    for _ in 0..10 {
        get_status(&router, "/n/1", Some(sampled)).await;
        get_status(&router, "/n/1", Some(unsampled)).await;
        get_status(&router, "/n/1", None).await;
    }
    let spans = sink.wait_for(&t, 10).await;
    assert!(spans
        .iter()
        .all(|s| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(t.traces(), (10, 0), "unsampled requests record nothing");

    // a new trace at ratio r is kept about r of the time, by trace id
    let sink = Memory::default();
    let t = tracer(Sampler::Ratio(0.25), &sink);
    let router = app(&t);
    for i in 0..4000 {
        get_status(&router, &format!("/n/{}", i * 4 + 1), None).await;
    }
    let kept = t.traces().0;
    // mean 1000, sd 27.4; ±5 sd
    assert!((863..=1137).contains(&kept), "kept {kept} of 4000 at 25%");
}

#[tokio::test]
async fn held_spans_are_bounded_per_trace_and_in_all() {
    let sink = Memory::default();
    let t = Tracer::builder()
        .sampler(Sampler::ErrorBiased {
            ratio: 1.0,
            slow: Duration::from_secs(60),
        })
        .sink(sink.clone())
        .queue(100_000)
        .max_spans_per_trace(10)
        .max_pending(25)
        .flush_every(Duration::from_millis(1))
        .build();
    let downstream = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let gate = Arc::new(tokio::sync::Barrier::new(4));
    let tracer_for_check = t.clone();
    let app: Router = Router::new()
        .route(
            "/fanout",
            get(move || {
                let gate = gate.clone();
                let t = tracer_for_check.clone();
                async move {
                    let client = tower::ServiceBuilder::new()
                        .layer(PropagateLayer::new())
                        .service(downstream);
                    for _ in 0..50 {
                        client
                            .clone()
                            .oneshot(Request::get("http://db.internal/q").body(()).unwrap())
                            .await
                            .unwrap();
                        assert!(t.pending() <= 25, "never more than the bound held");
                    }
                    // all four requests hold their spans at once here
                    gate.wait().await;
                    assert!(t.pending() <= 25);
                    "done"
                }
            }),
        )
        .layer(TraceLayer::new(&t));
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get_status(&app, "/fanout", None).await })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(t.pending(), 0, "released when the roots end");
    let too_large = t.dropped(DropReason::TraceTooLarge);
    let pending = t.dropped(DropReason::PendingLimit);
    // 200 client spans: at most 25 held at once and at most 10 a trace
    assert!(too_large + pending >= 200 - 40, "{too_large} + {pending}");
    let spans = sink.wait_for(&t, 4 + 200 - too_large - pending).await;
    let clients = spans.iter().filter(|s| s.kind == SpanKind::Client).count() as u64;
    assert_eq!(clients + too_large + pending, 200);
    assert!(clients <= 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_exports_every_queued_span_before_it_returns() {
    let sink = Memory::default();
    // a partial batch would wait an hour: only the flush sends it
    let t = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(sink.clone())
        .batch(512)
        .flush_every(Duration::from_secs(3600))
        .build();
    let app = app(&t);
    for i in 1..=3u32 {
        assert_eq!(
            get_status(&app, &format!("/n/{i}"), None).await,
            StatusCode::OK
        );
        // let the exporter take the first span into a partial batch, where it waits
        tokio::task::yield_now().await;
    }
    t.flush().await;
    assert_eq!(t.exported(), 3);
    assert_eq!(sink.0.lock().unwrap().len(), 3);
    // a tracer without a sink has nothing to flush
    Tracer::builder().build().flush().await;
}

#[tokio::test]
async fn a_callers_sampled_flag_decides_only_from_a_trusted_proxy_when_so_configured() {
    // the local sampler keeps nothing: only a believed caller's flag can make a request kept
    let tracer = Tracer::builder().sampler(Sampler::Ratio(0.0)).build();
    let proxies = garrison_core::TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        TraceLayer::new(&tracer)
            .trace_response(true)
            .sampled_from(proxies),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let flag_for = |peer: &'static str| {
        let app = app.clone();
        async move {
            let mut req = Request::get("/")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(garrison_core::PeerAddr(peer.parse().unwrap()));
            let resp = app.oneshot(req).await.unwrap();
            let back = resp.headers()["traceresponse"].to_str().unwrap().to_owned();
            // the caller's trace is joined either way
            assert!(back.starts_with(&format!("00-{trace}-")), "{back}");
            back[back.len() - 2..].to_owned()
        }
    };
    assert_eq!(
        flag_for("10.1.2.3:4000").await,
        "01",
        "a trusted proxy decides"
    );
    for _ in 0..50 {
        assert_eq!(
            flag_for("203.0.113.9:4000").await,
            "00",
            "a client forced its request to be recorded"
        );
    }
}

#[derive(Clone)]
struct UserId(&'static str);

impl AsRef<[u8]> for UserId {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[tokio::test]
async fn the_user_is_named_on_the_span_and_in_the_access_log_only_when_asked() {
    let logs = garrison_core::testing::LogCapture::start("garrison_trace");
    let sink = Memory::default();
    let t = tracer(Sampler::Always, &sink);
    let router = |layer: TraceLayer| {
        Router::new()
            .route("/me", get(|| async { "me" }))
            .layer(layer)
            // the authentication layer, outside the trace layer as it is outside the limiter
            .layer(axum::middleware::map_request(
                |mut req: Request<Body>| async move {
                    req.extensions_mut().insert(UserId("ada@example.com"));
                    req
                },
            ))
    };
    let named = router(TraceLayer::new(&t).access_log(true).enduser_id::<UserId>());
    let plain = router(TraceLayer::new(&t).access_log(true));
    assert_eq!(get_status(&named, "/me", None).await, StatusCode::OK);
    assert_eq!(get_status(&plain, "/me", None).await, StatusCode::OK);
    let spans = sink.wait_for(&t, 2).await;
    let enduser = |s: &SpanRecord| {
        s.attributes
            .iter()
            .find(|(k, _)| *k == "enduser.id")
            .map(|(_, v)| format!("{v:?}"))
    };
    let named_ids: Vec<Option<String>> = spans.iter().map(enduser).collect();
    assert_eq!(
        named_ids.iter().filter(|v| v.is_some()).count(),
        1,
        "{named_ids:?}"
    );
    assert!(named_ids
        .iter()
        .flatten()
        .all(|v| v.contains("ada@example.com")));
    let access: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("message=request"))
        .collect();
    assert_eq!(access.len(), 2, "{access:#?}");
    assert_eq!(
        access
            .iter()
            .filter(|l| l.contains("enduser_id=ada@example.com"))
            .count(),
        1,
        "{access:#?}"
    );
    // a layer that does not name users logs no field for it, not an empty one
    assert_eq!(
        access.iter().filter(|l| l.contains("enduser_id")).count(),
        1,
        "{access:#?}"
    );
}
