//! A handler that panics, and a service that returns `Err`, behind the whole stack: answered
//! `500` with the request id, the connection kept, counted as failures by the metrics and the
//! breaker, recorded as an `exception` event and one JSON log line with the ids.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use garrison::garrison_trace::{json_logs, Sampler, Tracer, Value};
use garrison::{Garrison, GarrisonConfig};
use garrison_workspace::{get as fetch, serve_with_peers, LogBuffer, MemorySink};
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing_subscriber::layer::SubscriberExt;

const CONFIG: &str = r#"
[service]
name = "panics-test"

[breaker]
profile = "critical"
"#;

/// The line of the handler's `panic!`, as the hook reports it.
const PANIC_LINE: u32 = line!() + 4;

async fn boom() -> &'static str {
    if std::hint::black_box(true) {
        panic!("card 4242-4242 declined by a bug");
    }
    "unreachable"
}

/// The JSON log lines of every test in this binary. The subscriber is the process's global
/// default: one scoped to a test's thread can miss events whose callsite another test's thread
/// registered first, while no subscriber was set there.
fn logs() -> &'static LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::registry().with(json_logs().with_writer(logs.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

/// One HTTP/1.1 keep-alive connection, read by hand: the test sees whether the server kept it.
struct Connection(TcpStream);

/// A response read off [`Connection`].
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        Self(TcpStream::connect(addr).await.expect("connect"))
    }

    async fn get(&mut self, path: &str) -> Raw {
        let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        self.0.write_all(req.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            let n = self.0.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "the server closed the connection: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("a content-length");
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).await.expect("body");
        Raw {
            status,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }
}

fn value(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix).map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_panicking_handler_is_answered_500_counted_traced_and_logged() {
    let logs = logs();

    let sink = MemorySink::default();
    // only errors are kept: the panics' traces must be among them
    let tracer = Tracer::builder()
        .sampler(Sampler::ErrorBiased {
            ratio: 0.0,
            slow: Duration::from_secs(3600),
        })
        .sink(sink.clone())
        .flush_every(Duration::from_millis(5))
        .build();
    let garrison = Garrison::builder()
        .config(GarrisonConfig::from_toml(CONFIG).unwrap())
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/boom", get(boom))
        .route("/ok", get(|| async { "fine" }))
        .layer(garrison.layer());
    let addr = serve_with_peers(app).await;

    let mut conn = Connection::open(addr).await;
    let mut ids = Vec::new();
    // the `critical` profile opens after 3 calls of which at least half failed
    for _ in 0..3 {
        let r = conn.get("/boom").await;
        assert_eq!(r.status, 500, "{}", r.body);
        let id = r.header("x-request-id").expect("a request id").to_owned();
        assert_eq!(
            r.body,
            format!(r#"{{"error":"internal server error","request_id":"{id}"}}"#)
        );
        assert!(
            !r.body.contains("4242"),
            "the panic's text reached the client"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        ids.push(id);
        // the same connection serves the next request
        let ok = conn.get("/ok").await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "fine"));
    }
    let open = conn.get("/boom").await;
    assert_eq!(open.status, 503, "the breaker did not open: {}", open.body);
    assert!(open.header("retry-after").is_some());
    let snapshot = garrison.breakers().get("server:/boom").unwrap().snapshot();
    assert_eq!(
        snapshot.state,
        garrison::garrison_breaker::State::Open,
        "{snapshot:?}"
    );

    let scrape = fetch(addr, "/metrics", &[]).await.body;
    let panics = scrape
        .lines()
        .find_map(|l| {
            value(
                l,
                &format!(
                    "garrison_panics_total{{http_route=\"/boom\",location=\"tests/panics.rs:{PANIC_LINE}\"}}"
                ),
            )
        })
        .unwrap_or_else(|| panic!("no garrison_panics_total for the handler's line in\n{scrape}"));
    assert_eq!(panics, 3);
    let counted = scrape
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains(r#"http_route="/boom""#)
                && l.contains(r#"http_response_status_code="500""#)
        })
        .unwrap_or_else(|| panic!("no 500 for /boom in\n{scrape}"));
    assert!(counted.contains(r#"error_type="panic""#), "{counted}");
    assert!(counted.ends_with(" 3"), "{counted}");
    assert!(!scrape.contains(r#"error_type="cancelled""#), "{scrape}");

    // the spans arrive through the exporter (no timing is asserted: only that they arrive)
    for _ in 0..2000 {
        if sink.0.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spans = sink.0.lock().unwrap().clone();
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| s.attribute("http.route") == Some(&Value::Str("/boom".into())))
        .filter(|s| s.attribute("http.response.status_code") == Some(&Value::Int(500)))
        .collect();
    assert_eq!(failed.len(), 3, "{spans:#?}");
    for span in &failed {
        assert!(span.error.is_some());
        assert_eq!(
            span.attribute("error.type"),
            Some(&Value::Str("panic".into()))
        );
        let event = span
            .events
            .iter()
            .find(|e| e.name == "exception")
            .expect("an exception event");
        let attr = |k: &str| {
            event
                .attributes
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v)
        };
        assert_eq!(attr("exception.type"), Some(&Value::Str("panic".into())));
        assert_eq!(
            attr("exception.message"),
            Some(&Value::Str("card 4242-4242 declined by a bug".into()))
        );
        assert_eq!(
            attr("code.filepath"),
            Some(&Value::Str("tests/panics.rs".into()))
        );
        assert_eq!(attr("code.lineno"), Some(&Value::Int(PANIC_LINE.into())));
    }
    // only the errors were kept
    assert!(
        spans
            .iter()
            .all(|s| s.attribute("http.route") != Some(&Value::Str("/ok".into()))),
        "{spans:#?}"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // the other tests of this binary log their own panics into the same buffer
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["target"] == "garrison::caught")
        .filter(|l| ids.iter().any(|id| l["request_id"] == id.as_str()))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(
            line["message"], "the service panicked; answered 500",
            "{line}"
        );
        assert_eq!(
            line["panic_message"], "card 4242-4242 declined by a bug",
            "{line}"
        );
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
        assert_eq!(
            line["location"],
            format!("tests/panics.rs:{PANIC_LINE}"),
            "{line}"
        );
    }
    drop(conn);
}

/// The error of the hyper service below.
#[derive(Debug)]
struct LedgerDown;

impl std::fmt::Display for LedgerDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ledger at 10.0.0.7 refused the connection")
    }
}

impl std::error::Error for LedgerDown {}

#[tokio::test]
async fn a_hyper_service_fn_that_returns_err_is_answered_500_counted_and_recorded() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let sink = MemorySink::default();
    let tracer = Tracer::builder()
        .sampler(Sampler::Always)
        .sink(sink.clone())
        .flush_every(Duration::from_millis(5))
        .build();
    let garrison = Garrison::builder()
        .config(
            GarrisonConfig::from_toml("[service]\nroutes = [\"/\", \"/ledger/{id}\"]\n").unwrap(),
        )
        .tracer(tracer)
        .build()
        .unwrap();
    let app = tower::ServiceBuilder::new()
        .layer(garrison.layer())
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            if req.uri().path().starts_with("/ledger/") {
                Err(LedgerDown)
            } else {
                Ok(Response::new(Full::new(Bytes::from_static(b"fine"))))
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let mut conn = Connection::open(addr).await;
    let r = conn.get("/ledger/7").await;
    assert_eq!(r.status, 500);
    assert!(
        !r.body.contains("10.0.0.7"),
        "the error's text reached the client"
    );
    assert!(
        r.body.contains(r.header("x-request-id").unwrap()),
        "{}",
        r.body
    );
    assert_eq!(
        conn.get("/").await.status,
        200,
        "the connection was dropped"
    );

    let scrape = fetch(addr, "/metrics", &[]).await.body;
    let counted = scrape
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains(r#"http_route="/ledger/{id}""#)
        })
        .unwrap_or_else(|| panic!("no /ledger/{{id}} in\n{scrape}"));
    assert!(
        counted.contains(r#"http_response_status_code="500""#)
            && counted.contains(r#"error_type="service_error""#),
        "{counted}"
    );
    assert!(!scrape.contains("garrison_panics_total{"), "{scrape}");

    for _ in 0..2000 {
        if !sink.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spans = sink.0.lock().unwrap().clone();
    let span = spans
        .iter()
        .find(|s| s.attribute("http.route") == Some(&Value::Str("/ledger/{id}".into())))
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert!(span.error.is_some());
    let event = &span.events[0];
    assert_eq!(event.name, "exception");
    assert!(event.attributes.contains(&(
        "exception.type",
        Value::Str(std::any::type_name::<LedgerDown>().into())
    )));
    assert!(event.attributes.contains(&(
        "exception.message",
        Value::Str("ledger at 10.0.0.7 refused the connection".into())
    )));
    let _ = std::io::stderr().flush();
}

#[tokio::test]
async fn the_parts_used_alone_see_a_panic_through_catch_panic_layer() {
    use garrison::garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer, State};
    use garrison::garrison_core::CatchPanicLayer;
    use garrison::garrison_metrics::{Format, MetricsLayer, MetricsRegistry};
    use garrison::garrison_trace::TraceLayer;

    let registry = MetricsRegistry::new();
    let breakers = BreakerRegistry::new();
    let tracer = Tracer::builder().sampler(Sampler::Never).build();
    let app = Router::new()
        .route("/boom", get(boom))
        .route("/ok", get(|| async { "fine" }))
        // innermost, right around the handlers: every part outside sees its `500`
        .layer(CatchPanicLayer::new())
        .layer(CircuitBreakerLayer::new(
            &breakers,
            "api",
            BreakerConfig::profile("critical").unwrap(),
        ))
        .layer(MetricsLayer::new(&registry))
        .layer(TraceLayer::new(&tracer));
    let addr = serve_with_peers(app).await;
    let mut conn = Connection::open(addr).await;
    // one breaker for the whole service: 3 calls, 2 of them failed, open it
    for ok in [true, false] {
        let r = conn.get("/boom").await;
        assert_eq!(r.status, 500);
        let id = r.header("x-request-id").unwrap();
        assert!(
            r.body.contains(id),
            "the trace layer's id is not in {}",
            r.body
        );
        if ok {
            assert_eq!(conn.get("/ok").await.status, 200);
        }
    }
    assert_eq!(breakers.get("api").unwrap().state(), State::Open);
    assert_eq!(conn.get("/ok").await.status, 503);
    let text = registry.render(Format::Prometheus);
    assert!(
        text.contains(&format!(
            "garrison_panics_total{{http_route=\"/boom\",location=\"tests/panics.rs:{PANIC_LINE}\"}} 2"
        )),
        "{text}"
    );
    assert!(text.contains(r#"error_type="panic""#), "{text}");
}
