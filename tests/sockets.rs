//! Outcomes as hyper really produces them over TCP: bodies hyper never polls (HEAD, 204),
//! streamed bodies, and clients that hang up mid-body.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry, SeriesSnapshot};
use garrison_workspace::{get as http_get, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app(registry: &MetricsRegistry) -> Router {
    Router::new()
        .route("/text", get(|| async { "hello" }))
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/endless",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u64, |i| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((
                        Ok::<_, Infallible>(bytes::Bytes::from(vec![b'x'; 1024])),
                        i + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(MetricsLayer::new(registry))
}

fn find<'a>(snap: &'a [SeriesSnapshot], route: &str, status: u16) -> Option<&'a SeriesSnapshot> {
    snap.iter()
        .find(|s| s.route == route && s.status == Some(status))
}

/// Waits (bounded) until the registry has recorded `n` requests: the server records when the
/// connection task finishes the body, which may be just after the client has read it.
async fn recorded(registry: &MetricsRegistry, n: u64) -> Vec<SeriesSnapshot> {
    for _ in 0..500 {
        let snap = registry.snapshot();
        if snap.iter().map(|s| s.duration.count()).sum::<u64>() >= n {
            return snap;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the server did not record {n} requests within 5 s: {:#?}",
        registry.snapshot()
    );
}

#[tokio::test]
async fn bodies_hyper_never_polls_count_as_success() {
    let registry = MetricsRegistry::new();
    let addr = serve(app(&registry)).await;

    let resp = http_get(addr, "/empty", &[]).await;
    assert_eq!(resp.status, 204);
    // HEAD: hyper sends the headers and drops the body unread.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"HEAD /text HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let resp = http_get(addr, "/text", &[]).await;
    assert_eq!(resp.body, "hello");

    let snap = recorded(&registry, 3).await;
    let empty = find(&snap, "/empty", 204).expect("204 recorded");
    assert_eq!(empty.error_type, None, "{empty:#?}");
    let text: Vec<_> = snap.iter().filter(|s| s.route == "/text").collect();
    let methods: Vec<_> = text
        .iter()
        .map(|s| (s.method.as_str(), s.status, s.duration.count()))
        .collect();
    assert_eq!(methods.len(), 2, "{snap:#?}");
    assert!(methods.contains(&("HEAD", Some(200), 1)), "{methods:?}");
    assert!(methods.contains(&("GET", Some(200), 1)), "{methods:?}");
    assert!(snap.iter().all(|s| s.error_type.is_none()), "{snap:#?}");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_body_is_counted_as_cancelled() {
    let registry = MetricsRegistry::new();
    let addr = serve(app(&registry)).await;

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    drop(conn);

    let snap = recorded(&registry, 1).await;
    let s = find(&snap, "/endless", 200).expect("recorded with its status");
    assert_eq!(s.error_type.as_deref(), Some("cancelled"));
}
