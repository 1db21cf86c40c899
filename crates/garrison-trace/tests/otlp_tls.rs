//! OTLP over TLS: an in-test gRPC receiver with a certificate made in the test (rcgen). A
//! collector whose CA is trusted gets the spans; one signed by an unknown CA gets none, the
//! requests are served all the same, and the failed exports are counted.

mod common;
use common::Receiver;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_trace::{DropReason, OtlpConfig, OtlpSink, Protocol, Sampler, TraceLayer, Tracer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::mpsc;
use tonic::transport::{Identity, ServerTlsConfig};
use tower::ServiceExt;

/// A CA, and a server certificate for `localhost` and 127.0.0.1 that it signed: (CA PEM,
/// server certificate PEM, server key PEM).
fn certificates() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

async fn tls_receiver(
    cert: &str,
    key: &str,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        .unwrap()
        .add_service(TraceServiceServer::new(Receiver(tx)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (addr, rx)
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("garrison-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A traced service whose spans go to `sink`; serves one request and flushes.
async fn serve_one(sink: OtlpSink) -> Tracer {
    let tracer = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(sink)
        .export_timeout(Duration::from_secs(5))
        .build();
    let app: Router = Router::new()
        .route("/users/{id}", get(|| async { "hi" }))
        .layer(TraceLayer::new(&tracer));
    let resp = app
        .oneshot(http::Request::get("/users/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the request is served whatever the collector"
    );
    axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), tracer.flush())
        .await
        .expect("the flush ends within the export timeout");
    tracer
}

#[tokio::test]
async fn a_collector_with_a_trusted_ca_gets_the_spans_over_tls() {
    let (ca, cert, key) = certificates();
    let (addr, mut rx) = tls_receiver(&cert, &key).await;
    let ca_file = write_temp("trusted-ca.pem", &ca);
    let sink = OtlpSink::new(
        OtlpConfig::from_env()
            .protocol(Protocol::Grpc)
            .endpoint(format!("https://localhost:{}", addr.port()))
            .ca_certificate(&ca_file)
            .timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let tracer = serve_one(sink).await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("spans arrive")
        .unwrap();
    let names: Vec<String> = got
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["GET /users/{id}"]);
    assert_eq!(tracer.exported(), 1);
    assert_eq!(tracer.dropped(DropReason::ExportFailed), 0);
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn a_collector_signed_by_an_unknown_ca_gets_nothing_and_the_drops_are_counted() {
    let (_, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    let (addr, mut rx) = tls_receiver(&cert, &key).await;
    let ca_file = write_temp("other-ca.pem", &other_ca);
    let sink = OtlpSink::new(
        OtlpConfig::from_env()
            .protocol(Protocol::Grpc)
            .endpoint(format!("https://localhost:{}", addr.port()))
            .ca_certificate(&ca_file)
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let tracer = serve_one(sink).await;
    assert_eq!(tracer.exported(), 0);
    assert_eq!(tracer.dropped(DropReason::ExportFailed), 1);
    assert!(rx.try_recv().is_err(), "nothing reached the collector");
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn a_missing_or_empty_ca_file_is_an_error_at_start_that_names_it() {
    let missing = std::env::temp_dir().join("garrison-no-such-ca.pem");
    let err = OtlpSink::new(
        OtlpConfig::from_env()
            .endpoint("https://localhost:4317")
            .ca_certificate(&missing),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("garrison-no-such-ca.pem"), "{err}");
    let empty = write_temp("empty-ca.pem", "not a certificate\n");
    let err = OtlpSink::new(
        OtlpConfig::from_env()
            .protocol(Protocol::HttpProtobuf)
            .endpoint("https://localhost:4318/v1/traces")
            .ca_certificate(&empty),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no PEM certificate"), "{err}");
    let _ = std::fs::remove_file(empty);
}
