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

#[tokio::test]
async fn the_python_sdk_client_finds_its_trace_in_the_server_answer() {
    let python = python_with_otel();
    let metrics = MetricsRegistry::new();
    let tracer = Tracer::builder().sampler(trace_axum::SAMPLER).build();
    let addr = serve_with_peers(trace_axum::app(&tracer, &metrics)).await;

    let url = format!("http://{addr}/hello/py");
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
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
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
