//! A collector that is down or hangs costs requests nothing: spans are dropped and counted.
//! The test counts drops and completions; it times nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{Format, MetricsRegistry};
use garrison_trace::{DropReason, OtlpConfig, OtlpSink, Protocol, Sampler, TraceLayer, Tracer};
use http::Request;
use tower::ServiceExt;

async fn silent_listener() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn flood(endpoint: String, protocol: Protocol) {
    let metrics = MetricsRegistry::new();
    let tracer = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(OtlpSink::new(OtlpConfig::from_env().protocol(protocol).endpoint(endpoint)).unwrap())
        .queue(64)
        .batch(16)
        .flush_every(Duration::from_millis(10))
        .export_timeout(Duration::from_millis(300))
        .build();
    tracer.metrics(&metrics);
    let app: Router = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(TraceLayer::new(&tracer));

    // 2000 requests, all answered, while the exporter is stuck on the first batches
    let n = 2000;
    for _ in 0..n {
        let resp = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
    }
    let queue_full = tracer.dropped(DropReason::QueueFull);
    assert!(
        queue_full >= n - 64 - 16,
        "spans beyond the queue are dropped at once: {queue_full}"
    );
    assert_eq!(tracer.exported(), 0);
    assert_eq!(tracer.traces(), (n, 0), "every trace was kept by sampling");

    // the stuck exports are abandoned at their timeout and counted too
    for _ in 0..2000 {
        if tracer.dropped(DropReason::ExportFailed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(tracer.dropped(DropReason::ExportFailed) > 0);
    let text = metrics.render(Format::Prometheus);
    assert!(
        text.contains(&format!(
            "garrison_trace_spans_dropped_total{{reason=\"queue_full\"}} {}",
            tracer.dropped(DropReason::QueueFull)
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_hanging_grpc_collector_drops_spans_not_requests() {
    let addr = silent_listener().await;
    flood(format!("http://{addr}"), Protocol::Grpc).await;
}

#[tokio::test]
async fn a_hanging_http_collector_drops_spans_not_requests() {
    let addr = silent_listener().await;
    flood(format!("http://{addr}/v1/traces"), Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn a_collector_that_is_down_drops_spans_not_requests() {
    flood(
        format!("http://127.0.0.1:{}", closed_port()),
        Protocol::Grpc,
    )
    .await;
}
