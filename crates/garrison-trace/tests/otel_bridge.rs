//! The OpenTelemetry bridge: garrison's server span in the user's SDK pipeline, the handler's
//! `tracing` spans (through tracing-opentelemetry) and spawned tasks as its children, one
//! traceparent for `PropagateLayer` and the global propagator, and error-biased sampling of
//! whole traces as a span processor (SDK in-memory exporter, tokio's paused clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_core::{SharedClock, TokioClock};
use garrison_trace::{
    ErrorBiasedProcessor, Pipeline, PropagateLayer, Sampler, SpanRecord, SpanSink, TailDrop,
    TraceLayer, Tracer,
};
use http::{Request, StatusCode};
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, SpanData,
};
use tower::{Layer, ServiceExt};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// What the handler saw: the current OpenTelemetry ids, and the `traceparent` that
/// `PropagateLayer` and the global propagator put on outgoing requests.
#[derive(Clone, Debug, Default)]
struct Seen(Arc<Mutex<HashMap<&'static str, String>>>);

impl Seen {
    fn put(&self, k: &'static str, v: String) {
        self.0.lock().unwrap().insert(k, v);
    }
    fn get(&self, k: &str) -> String {
        self.0.lock().unwrap().get(k).cloned().unwrap_or_default()
    }
}

/// An outgoing call through `PropagateLayer`: returns the `traceparent` it sent. The client
/// behind it checks that the global propagator, asked inside it (as an OpenTelemetry-
/// instrumented client would), injects the very same `traceparent`.
async fn call_out(status: u16) -> String {
    let (tp, global) = call_out_seen(status).await;
    if let Some(global) = global {
        assert_eq!(global, tp, "the global propagator inside the client agrees");
    }
    tp
}

/// [`call_out`]'s `traceparent`, and the one the global propagator injected inside the client
/// (none while no global propagator is set).
async fn call_out_seen(status: u16) -> (String, Option<String>) {
    let sent = Arc::new(Mutex::new((String::new(), None)));
    let keep = sent.clone();
    let client = PropagateLayer::new().layer(tower::service_fn(move |req: Request<()>| {
        let tp = req.headers()["traceparent"].to_str().unwrap().to_owned();
        let mut injected = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&Context::current(), &mut injected)
        });
        *keep.lock().unwrap() = (tp, injected.remove("traceparent"));
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder().status(status).body(()).unwrap(),
            )
        }
    }));
    client
        .oneshot(Request::get("http://db.internal:5984/q").body(()).unwrap())
        .await
        .unwrap();
    let tp = sent.lock().unwrap().clone();
    tp
}

#[tracing::instrument]
async fn handler_work(seen: Seen) {
    let task = tokio::spawn(
        async {
            tracing::info_span!("in_task").in_scope(|| {});
        }
        .in_current_span(),
    );
    task.await.unwrap();
    let (tp, global) = call_out_seen(200).await;
    seen.put("inner_global", global.unwrap_or_default());
    seen.put("propagate", tp);
}

fn app(tracer: &Tracer, seen: Seen) -> Router {
    Router::new()
        .route(
            "/work/{id}",
            get(move || {
                let seen = seen.clone();
                async move {
                    // the handler's own view of the current OpenTelemetry context
                    let cx = Context::current();
                    let sc = cx.span().span_context().clone();
                    seen.put("current_trace", sc.trace_id().to_string());
                    seen.put("current_span", sc.span_id().to_string());
                    let mut injected = HashMap::new();
                    opentelemetry::global::get_text_map_propagator(|p| {
                        p.inject_context(&cx, &mut injected)
                    });
                    seen.put("global", injected.remove("traceparent").unwrap_or_default());
                    handler_work(seen).await;
                    "done"
                }
            }),
        )
        .layer(TraceLayer::new(tracer).trace_response(true))
}

/// A provider whose spans are kept in memory, as they end.
fn in_memory() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

fn subscriber(provider: &SdkTracerProvider) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")))
}

async fn get_path(app: &Router, path: &str, traceparent: Option<&str>) -> StatusCode {
    let mut req = Request::get(path);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    status
}

fn by_name<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

#[tokio::test]
async fn the_handler_and_its_tasks_are_children_of_the_server_span_in_the_users_pipeline() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (exporter, provider) = in_memory();
    let _guard = tracing::subscriber::set_default(subscriber(&provider));
    let tracer = Tracer::builder().pipeline(Pipeline::new(&provider)).build();
    let seen = Seen::default();
    let app = app(&tracer, seen.clone());

    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(
        get_path(&app, "/work/7", Some(&caller)).await,
        StatusCode::OK
    );
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // one trace: the caller's
    assert!(spans.len() >= 4, "{spans:#?}");
    for s in &spans {
        assert_eq!(
            s.span_context.trace_id().to_string(),
            CALLER_TRACE,
            "{s:#?}"
        );
    }
    let server = by_name(&spans, "GET /work/{id}");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN);
    assert!(server.parent_span_is_remote);
    assert_eq!(server.instrumentation_scope.name(), "garrison-trace");
    let attr = |s: &SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr(server, "http.route").as_deref(), Some("/work/{id}"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let server_id = server.span_context.span_id();

    let handler = by_name(&spans, "handler_work");
    assert_eq!(handler.parent_span_id, server_id, "the handler's span");
    let task = by_name(&spans, "in_task");
    assert_eq!(
        task.parent_span_id,
        handler.span_context.span_id(),
        "a span in a task spawned with in_current_span"
    );
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("a client span");
    assert_eq!(client.parent_span_id, server_id);
    assert_eq!(
        attr(client, "server.address").as_deref(),
        Some("db.internal")
    );

    // Context::current() in the handler is the server span
    assert_eq!(seen.get("current_trace"), CALLER_TRACE);
    assert_eq!(seen.get("current_span"), server_id.to_string());
    // PropagateLayer sends the client span; the global propagator the current (server) span
    assert_eq!(
        seen.get("propagate"),
        format!("00-{CALLER_TRACE}-{}-01", client.span_context.span_id())
    );
    assert_eq!(
        seen.get("global"),
        format!("00-{CALLER_TRACE}-{server_id}-01")
    );
}

#[tokio::test]
async fn with_garrisons_own_pipeline_the_handlers_spans_still_join_its_server_span() {
    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Vec<SpanRecord>>>);
    impl SpanSink for Keep {
        fn export(
            &self,
            batch: Vec<SpanRecord>,
        ) -> garrison_trace::BoxFuture<'_, Result<(), String>> {
            self.0.lock().unwrap().extend(batch);
            Box::pin(async { Ok(()) })
        }
    }
    let (exporter, provider) = in_memory();
    let _guard = tracing::subscriber::set_default(subscriber(&provider));
    let keep = Keep::default();
    let tracer = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(keep.clone())
        .build();
    let seen = Seen::default();
    let app = app(&tracer, seen.clone());
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(
        get_path(&app, "/work/7", Some(&caller)).await,
        StatusCode::OK
    );
    tracer.flush().await;
    provider.force_flush().unwrap();

    let ours = keep.0.lock().unwrap().clone();
    let server = ours
        .iter()
        .find(|s| s.kind == garrison_trace::SpanKind::Server)
        .expect("garrison's server span");
    let user = exporter.get_finished_spans().unwrap();
    let handler = by_name(&user, "handler_work");
    assert_eq!(handler.span_context.trace_id().to_string(), CALLER_TRACE);
    assert_eq!(
        handler.parent_span_id.to_string(),
        server.span_id.to_string(),
        "the user's handler span is a child of garrison's server span"
    );
    assert_eq!(seen.get("current_span"), server.span_id.to_string());
    assert_eq!(
        seen.get("global"),
        format!("00-{CALLER_TRACE}-{}-01", server.span_id)
    );
}

/// A service in the user's pipeline with error-biased sampling: `/ok` is fast, `/fail` answers
/// 500 after a handler span and a client call, `/slow` takes 2 s (of tokio's paused clock).
fn tail_app(provider: &SdkTracerProvider) -> Router {
    let tracer = Tracer::builder()
        .pipeline(Pipeline::new(provider))
        .clock(SharedClock::new(TokioClock))
        .build();
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(|| async {
                async {
                    call_out(503).await;
                }
                .instrument(tracing::info_span!("query"))
                .await;
                (StatusCode::INTERNAL_SERVER_ERROR, "no")
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        )
        .layer(TraceLayer::new(&tracer))
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_slow_request_exports_its_whole_trace_and_a_fast_one_nothing() {
    let exporter = InMemorySpanExporter::default();
    let tail = Arc::new(
        ErrorBiasedProcessor::builder(SimpleSpanProcessor::new(exporter.clone()))
            .ratio(0.0)
            .slow(Duration::from_secs(1))
            .build(),
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Shared(tail.clone()))
        .build();
    let _guard = tracing::subscriber::set_default(subscriber(&provider));
    let app = tail_app(&provider);

    for _ in 0..5 {
        assert_eq!(get_path(&app, "/ok", None).await, StatusCode::OK);
    }
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "fast successful requests outside the ratio export nothing"
    );
    assert_eq!(tail.traces(), (0, 5));

    assert_eq!(
        get_path(&app, "/fail", None).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let spans = exporter.get_finished_spans().unwrap();
    let kinds: Vec<_> = spans
        .iter()
        .map(|s| (s.name.to_string(), s.span_kind.clone()))
        .collect();
    assert_eq!(
        spans.len(),
        3,
        "server, handler and client spans: {kinds:?}"
    );
    let server = by_name(&spans, "GET /fail");
    let query = by_name(&spans, "query");
    assert_eq!(query.parent_span_id, server.span_context.span_id());
    assert!(spans
        .iter()
        .any(|s| s.span_kind == SpanKind::Client
            && s.parent_span_id == server.span_context.span_id()));
    assert!(matches!(
        server.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    exporter.reset();

    assert_eq!(get_path(&app, "/slow", None).await, StatusCode::OK);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let took = spans[0]
        .end_time
        .duration_since(spans[0].start_time)
        .unwrap();
    assert_eq!(took, Duration::from_secs(2), "timed by the paused clock");
    assert_eq!(tail.traces(), (2, 5));
    assert_eq!(tail.pending(), 0);
}

#[tokio::test]
async fn a_sampled_caller_keeps_the_trace_and_a_flood_of_undecided_traces_stays_bounded() {
    let exporter = InMemorySpanExporter::default();
    let tail = Arc::new(
        ErrorBiasedProcessor::builder(SimpleSpanProcessor::new(exporter.clone()))
            .ratio(0.0)
            .slow(Duration::from_secs(3600))
            .max_pending(10)
            .max_spans_per_trace(3)
            .build(),
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Shared(tail.clone()))
        .build();
    let otel = provider.tracer("flood");

    // roots that never end: every child waits for a decision
    let mut roots = Vec::new();
    for _ in 0..20 {
        let cx = Context::new().with_span(otel.start("root"));
        for _ in 0..2 {
            otel.start_with_context("child", &cx).end();
        }
        roots.push(cx);
    }
    assert!(tail.pending() <= 10, "held {}", tail.pending());
    assert_eq!(
        tail.dropped(TailDrop::PendingLimit) + tail.pending() as u64,
        40
    );
    let cx = Context::new().with_span(otel.start("big"));
    for _ in 0..5 {
        otel.start_with_context("child", &cx).end();
    }
    assert_eq!(tail.dropped(TailDrop::TraceTooLarge), 2);
    assert!(tail.pending() <= 10);
    assert!(exporter.get_finished_spans().unwrap().is_empty());

    // a caller that sampled the trace decides for it, whatever happens here
    let app = tail_app(&provider);
    let _guard = tracing::subscriber::set_default(subscriber(&provider));
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(get_path(&app, "/ok", Some(&caller)).await, StatusCode::OK);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_context.trace_id().to_string(), CALLER_TRACE);
    drop(roots);
}

/// A processor shared with the test, which reads its counters.
#[derive(Debug)]
struct Shared<P>(Arc<P>);

impl<P: opentelemetry_sdk::trace::SpanProcessor> opentelemetry_sdk::trace::SpanProcessor
    for Shared<P>
{
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, t: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(t)
    }
}

#[tokio::test]
async fn outside_garrisons_requests_propagate_layer_carries_the_current_opentelemetry_span() {
    let (_exporter, provider) = in_memory();
    let otel = provider.tracer("job");
    let span = otel.start("nightly-job");
    let sc = span.span_context().clone();
    let cx = Context::new().with_span(span);
    let sent = {
        let _g = cx.clone().attach();
        call_out(200).await
    };
    assert_eq!(sent, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));
}

#[tokio::test]
async fn with_the_context_off_the_handler_sees_no_opentelemetry_span() {
    let tracer = Tracer::builder().sampler(Sampler::Always).build();
    let app = Router::new()
        .route(
            "/x",
            get(|| async {
                let on = Context::current().span().span_context().is_valid();
                if on {
                    "current"
                } else {
                    "none"
                }
            }),
        )
        .layer(TraceLayer::new(&tracer).otel_context(false));
    let resp = app
        .oneshot(Request::get("/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
    assert_eq!(&body[..], b"none");
}

/// The line of the handler's `panic!` below.
const PANIC_LINE: u32 = line!() + 11;

#[tokio::test]
async fn a_panic_is_an_exception_event_on_the_server_span_in_the_users_pipeline() {
    let (exporter, provider) = in_memory();
    let tracer = Tracer::builder().pipeline(Pipeline::new(&provider)).build();
    let app = Router::new()
        .route(
            "/pay",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("ledger invariant broken");
                }
                "paid"
            }),
        )
        .layer(garrison_core::CatchPanicLayer::new())
        .layer(TraceLayer::new(&tracer));
    let resp = app
        .oneshot(Request::get("/pay").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(
        body,
        format!(r#"{{"error":"internal server error","request_id":"{id}"}}"#)
    );
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("the server span");
    assert!(
        matches!(server.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        server.status
    );
    let event = server
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    let attr = |k: &str| {
        event
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr("exception.type").as_deref(), Some("panic"));
    assert_eq!(
        attr("exception.message").as_deref(),
        Some("ledger invariant broken")
    );
    assert_eq!(
        attr("code.file.path").as_deref(),
        Some("crates/garrison-trace/tests/otel_bridge.rs")
    );
    assert_eq!(attr("code.lineno"), Some(PANIC_LINE.to_string()));
    assert!(server
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "error.type" && kv.value.to_string() == "panic"));
}
