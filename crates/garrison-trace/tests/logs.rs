//! JSON log lines carry trace_id, span_id and request_id inside a request; credentials are
//! redacted; baggage never reaches a log line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_trace::{json_logs, Sampler, TraceLayer, Tracer};
use http::Request;
use serde_json::Value;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_line_inside_a_request_names_its_trace_and_request() {
    let buf = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(json_logs().with_writer(buf.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let tracer = Tracer::builder().sampler(Sampler::Never).build();
    let app: Router = Router::new()
        .route(
            "/login",
            get(|| async {
                tracing::info!(
                    user = "ada",
                    password = "hunter2",
                    attempts = 3u64,
                    "signing in"
                );
                tracing::warn!(token = "abc.def", "token refreshed");
                "ok"
            }),
        )
        .layer(TraceLayer::new(&tracer).access_log(true));
    tracing::info!("outside any request");
    let req = Request::get("/login?code=s3cret&next=%2Fhome")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .header("x-request-id", "req-77")
        .header("baggage", "session=topsecret")
        .header("authorization", "Bearer topsecret")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    axum::body::to_bytes(resp.into_body(), 64).await.unwrap();

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("abc.def"),
        "{text}"
    );
    assert!(
        !text.contains("topsecret") && !text.contains("s3cret"),
        "{text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");

    assert_eq!(lines[0]["message"], "outside any request");
    assert!(lines[0].get("trace_id").is_none());

    let inside = &lines[1..];
    for l in inside {
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{l}");
        assert_eq!(l["request_id"], "req-77");
        assert_eq!(l["span_id"].as_str().unwrap().len(), 16);
        assert_ne!(
            l["span_id"], "00f067aa0ba902b7",
            "our server span, not the caller's"
        );
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(inside[0]["message"], "signing in");
    assert_eq!(inside[0]["level"], "INFO");
    assert_eq!(inside[0]["user"], "ada");
    assert_eq!(inside[0]["password"], "[redacted]");
    assert_eq!(inside[0]["attempts"], 3);
    assert_eq!(inside[1]["token"], "[redacted]");
    assert_eq!(inside[1]["level"], "WARN");

    let access = &inside[2];
    assert_eq!(access["target"], "garrison_trace::access");
    assert_eq!(access["route"], "/login");
    assert_eq!(access["path"], "/login?code=[redacted]&next=%2Fhome");
    assert_eq!(access["status"], 200);
    assert!(access["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn hostile_fields_stay_bounded() {
    let buf = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(json_logs().with_writer(buf.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let huge = "x\"\n".repeat(100_000);
    tracing::info!(field = %huge, "{}", huge);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.len() < 3 * garrison_trace::MAX_FIELD * 2 + 512,
        "{}",
        text.len()
    );
    let line: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert!(line["field"].as_str().unwrap().len() <= garrison_trace::MAX_FIELD);
}

#[tokio::test]
async fn tasks_the_handler_spawns_keep_the_requests_ids_in_their_lines() {
    use tracing::Instrument;
    let buf = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(json_logs().with_writer(buf.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let tracer = Tracer::builder().sampler(Sampler::Never).build();
    let app: Router = Router::new()
        .route(
            "/job",
            get(|| async {
                // a span of the handler's, carried into a task with in_current_span
                let carried = async {
                    tracing::info!("carried");
                }
                .in_current_span();
                let span = tracing::info_span!("handler");
                let first = tokio::spawn(carried.instrument(span.clone()));
                // a task given a span the handler made
                let second = tokio::spawn(
                    async {
                        tokio::task::yield_now().await;
                        tracing::info!("instrumented");
                    }
                    .instrument(tracing::info_span!("job")),
                );
                first.await.unwrap();
                second.await.unwrap();
                drop(span);
                "ok"
            }),
        )
        .layer(TraceLayer::new(&tracer));
    let req = Request::get("/job")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .header("x-request-id", "req-88")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
    // a line outside any request after it names none
    tokio::spawn(async { tracing::info!("later") })
        .await
        .unwrap();

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines[..2] {
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{l}");
        assert_eq!(l["request_id"], "req-88", "{l}");
    }
    assert_eq!(lines[2]["message"], "later");
    assert!(lines[2].get("trace_id").is_none(), "{text}");
}

#[test]
fn personal_data_is_redacted_by_field_name_and_on_request_by_pattern() {
    use garrison_trace::{PiiPattern, Redaction};
    let buf = Buffer::default();
    let redaction = Redaction::default()
        .pattern(PiiPattern::Email)
        .pattern(PiiPattern::Card);
    let subscriber = tracing_subscriber::registry()
        .with(json_logs().redaction(redaction).with_writer(buf.clone()));
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(
            email = "ada@example.com",
            phone = "+44 20 7946 0958",
            "signed up"
        );
        tracing::info!(
            note = "paid with 4111 1111 1111 1111",
            "order 1234567890 for grace@example.org"
        );
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for secret in ["ada@", "7946", "4111", "grace@"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["email"], "[redacted]");
    assert_eq!(lines[0]["phone"], "[redacted]");
    assert_eq!(lines[1]["note"], "paid with [redacted]");
    assert_eq!(lines[1]["message"], "order 1234567890 for [redacted]");
}
