//! A real foreign peer: the official OpenTelemetry Python SDK with its `requests`
//! instrumentation calls the trace example over a real socket; the server must join the
//! client's trace, and say so in `traceresponse` and in its metrics' exemplars.

use std::process::Command;

use garrison_metrics::MetricsRegistry;
use garrison_trace::Tracer;
use garrison_workspace::{get, serve_with_peers};

#[allow(dead_code)]
#[path = "../examples/trace_axum.rs"]
mod trace_axum;

fn python_with_otel() -> &'static str {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.instrumentation.requests, requests",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with opentelemetry-sdk, opentelemetry-instrumentation-requests and requests is \
         needed: run `just services` or `python3 -m pip install -r tests/peers/requirements.txt`"
    );
    "python3"
}

/// Runs the Python client (`tests/peers/otel_requests_client.py`) against `url`: what it
/// printed, which it exits 0 only when the server joined its trace.
async fn python_client(python: &'static str, url: String) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("tests/peers/otel_requests_client.py")
            .arg(url)
            .output()
            .expect("run the Python peer")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "peer failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test]
async fn the_python_sdk_client_finds_its_trace_in_the_server_answer() {
    let python = python_with_otel();
    let metrics = MetricsRegistry::new();
    let tracer = Tracer::builder().sampler(trace_axum::SAMPLER).build();
    let addr = serve_with_peers(trace_axum::app(&tracer, &metrics)).await;

    let answer = python_client(python, format!("http://{addr}/hello/py")).await;
    let trace_id = answer["trace_id"].as_str().unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"], "hello py\n");
    let tr = answer["traceresponse"].as_str().unwrap();
    assert_eq!(&tr[3..35], trace_id, "the server joined the client's trace");
    assert_ne!(
        &tr[36..52],
        answer["client_span_id"].as_str().unwrap(),
        "with its own span"
    );
    assert_eq!(answer["request_id"].as_str().unwrap().len(), 32);

    // the server's duration histogram links the request to the client's trace
    let scrape = get(
        addr,
        "/metrics",
        &[("accept", "application/openmetrics-text")],
    )
    .await;
    assert!(
        scrape
            .body
            .contains(&format!("# {{trace_id=\"{trace_id}\"}}")),
        "no exemplar with {trace_id} in\n{}",
        scrape.body
    );
}

/// The Python downstream (`tests/peers/otel_server.py`): its port, and the process, which ends
/// when its standard input closes (the child is killed on drop too).
struct Downstream(std::process::Child, u16);

impl Drop for Downstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_downstream(python: &str) -> Downstream {
    use std::io::BufRead;
    let mut child = Command::new(python)
        .arg("tests/peers/otel_server.py")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the Python downstream");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("its port");
    let port = line.trim().parse().expect("a port on the first line");
    Downstream(child, port)
}

#[tokio::test]
async fn python_client_garrison_service_and_python_downstream_share_one_trace() {
    use axum::routing::get as route_get;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let python = python_with_otel();
    let downstream = python_downstream(python);
    let port = downstream.1;
    let tracer = Tracer::builder()
        .sampler(garrison_trace::Sampler::Always)
        .build();
    // the service calls the downstream through PropagateLayer and answers with what it said
    let app = axum::Router::new()
        .route(
            "/forward",
            route_get(move || async move {
                let client = tower::ServiceBuilder::new()
                    .layer(garrison_trace::PropagateLayer::new())
                    .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
                let req = http::Request::get(format!("http://127.0.0.1:{port}/ids"))
                    .body(Empty::new())
                    .unwrap();
                let resp = tower::ServiceExt::oneshot(client, req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }),
        )
        .layer(garrison_trace::TraceLayer::new(&tracer).trace_response(true));
    let addr = serve_with_peers(app).await;

    let answer = python_client(python, format!("http://{addr}/forward")).await;
    let client_trace = answer["trace_id"].as_str().unwrap();
    let tr = answer["traceresponse"].as_str().unwrap();
    let (garrison_trace, garrison_span) = (&tr[3..35], &tr[36..52]);
    let downstream: serde_json::Value =
        serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        garrison_trace, client_trace,
        "garrison joined the client's trace"
    );
    assert_eq!(
        downstream["trace_id"], client_trace,
        "the downstream continued the same trace: {downstream}"
    );
    assert_eq!(downstream["parent_is_remote"], true);
    assert_ne!(
        downstream["parent_span_id"], garrison_span,
        "its parent is garrison's client span, a child of the server span"
    );
    assert_ne!(downstream["parent_span_id"], "0000000000000000");
}
