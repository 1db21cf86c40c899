//! Real OTLP: in-test receivers built from the opentelemetry-proto definitions (gRPC and
//! HTTP/protobuf) get the spans of requests served over real sockets.

mod common;
use common::Receiver;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use garrison_trace::{OtlpConfig, OtlpSink, PropagateLayer, Protocol, Sampler, TraceLayer, Tracer};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn grpc_receiver() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

async fn http_receiver() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(tx): State<mpsc::UnboundedSender<ExportTraceServiceRequest>>,
                 body: Bytes| async move {
                    let req = <ExportTraceServiceRequest as prost::Message>::decode(body)
                        .expect("a protobuf ExportTraceServiceRequest");
                    let _ = tx.send(req);
                    ""
                },
            ),
        )
        .with_state(tx);
    (serve(app).await, rx)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

/// The service under test: `/users/{id}` calls a downstream service through
/// `PropagateLayer`; the downstream echoes the `traceparent` it received.
async fn service(tracer: &Tracer) -> SocketAddr {
    let downstream = serve(Router::new().route(
        "/echo",
        get(|headers: http::HeaderMap| async move {
            headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        }),
    ))
    .await;
    let app = Router::new()
        .route(
            "/users/{id}",
            get(move || async move {
                let client = tower::ServiceBuilder::new()
                    .layer(PropagateLayer::new())
                    .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
                let req = http::Request::get(format!("http://{downstream}/echo?token=s3cret"))
                    .body(Empty::new())
                    .unwrap();
                let resp = tower::ServiceExt::oneshot(client, req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }),
        )
        .layer(TraceLayer::new(tracer).trace_response(true));
    serve(app).await
}

async fn call(addr: SocketAddr) -> (http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(format!("http://{addr}/users/42"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("user-agent", "otlp-test/1.0")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn spans(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    n: usize,
) -> (Vec<Span>, String) {
    let mut spans = Vec::new();
    let mut service = String::new();
    while spans.len() < n {
        let req = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the receiver gets the spans")
            .unwrap();
        for rs in req.resource_spans {
            if let Some(r) = rs.resource {
                for kv in r.attributes {
                    if kv.key == "service.name" {
                        if let Some(AnyValue::StringValue(s)) = kv.value.and_then(|v| v.value) {
                            service = s;
                        }
                    }
                }
            }
            for ss in rs.scope_spans {
                assert_eq!(ss.scope.as_ref().unwrap().name, "garrison-trace");
                spans.extend(ss.spans);
            }
        }
    }
    (spans, service)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

async fn check(
    protocol: Protocol,
    endpoint: String,
    mut rx: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let sink = OtlpSink::new(
        OtlpConfig::from_env()
            .protocol(protocol)
            .endpoint(endpoint)
            .service_name("otlp-test"),
    )
    .unwrap();
    let tracer = Tracer::builder()
        .sampler(Sampler::Ratio(0.0)) // the caller's sampled flag decides
        .sink(sink)
        .flush_every(Duration::from_millis(20))
        .build();
    let addr = service(&tracer).await;
    let (headers, echoed) = call(addr).await;

    let (spans, service_name) = spans(&mut rx, 2).await;
    assert_eq!(service_name, "otlp-test");
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();

    // the caller's trace, the caller's span as parent
    assert_eq!(hex(&server.trace_id), CALLER_TRACE);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.name, "GET /users/{id}");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "http.route"), "/users/{id}");
    assert_eq!(text(server, "url.path"), "/users/42");
    assert_eq!(text(server, "url.scheme"), "http");
    assert_eq!(text(server, "server.address"), "127.0.0.1");
    assert_eq!(text(server, "client.address"), "127.0.0.1");
    assert_eq!(text(server, "user_agent.original"), "otlp-test/1.0");
    assert_eq!(text(server, "network.protocol.version"), "1.1");
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    assert!(attr(server, "error.type").is_none());
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    // the client span is the server span's child, and the downstream got it as parent
    assert_eq!(hex(&client.trace_id), CALLER_TRACE);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.name, "GET");
    assert_eq!(text(client, "server.address"), "127.0.0.1");
    assert!(text(client, "url.full").ends_with("/echo?token=[redacted]"));
    assert_eq!(
        attr(client, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    assert_eq!(
        echoed,
        format!("00-{CALLER_TRACE}-{}-01", hex(&client.span_id))
    );

    // traceresponse names the server span
    assert_eq!(
        headers["traceresponse"],
        format!("00-{CALLER_TRACE}-{}-01", hex(&server.span_id)).as_str()
    );
    // the exporter counts once the collector's answer is back
    for _ in 0..1000 {
        if tracer.exported() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tracer.exported(), 2);
}

#[tokio::test]
async fn grpc_receiver_gets_the_spans_with_parents_and_attributes() {
    let (addr, rx) = grpc_receiver().await;
    check(Protocol::Grpc, format!("http://{addr}"), rx).await;
}

#[tokio::test]
async fn http_protobuf_receiver_gets_the_spans_too() {
    let (addr, rx) = http_receiver().await;
    check(
        Protocol::HttpProtobuf,
        format!("http://{addr}/v1/traces"),
        rx,
    )
    .await;
}
