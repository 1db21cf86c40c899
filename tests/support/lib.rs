//! Helpers shared by the whole-stack tests, examples and benches of the Garrison workspace.
//! Not published.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Serves `router` on a free loopback port over real sockets and returns its address. The
/// server runs until the runtime stops.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("server");
    });
    addr
}

/// Serves `router` like [`serve`], with the peer address of each connection in the request
/// extensions (axum's `ConnectInfo`), as client-keyed layers need.
pub async fn serve_with_peers(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("server");
    });
    addr
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// Sends `GET path` to `addr` over a real connection, with extra `headers`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    send(addr, http::Method::GET, path, headers).await
}

/// Sends a bodiless `method path` to `addr` over a real connection, with extra `headers`.
pub async fn send(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
    read(resp).await
}

/// Sends `POST path` with `body` to `addr` over a real connection.
pub async fn post(addr: SocketAddr, path: &str, body: &'static str) -> TestResponse {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("POST {path} on {addr}: {e}"));
    read(resp).await
}

/// `resp` as a test sees it, its body read whole.
async fn read(resp: http::Response<hyper::body::Incoming>) -> TestResponse {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    TestResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The path of an external tool the tests need, or a panic that says how to install it.
pub fn require_tool(name: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed. Run `just services` (it installs Debian's `{debian_package}` \
         package when run as root), or `sudo apt-get install {debian_package}`."
    );
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Shared by the benches.
pub mod bench {
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A current-thread runtime, as each bench thread uses.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Sends `GET path` through `app` and reads the response body to its end.
    #[inline]
    pub async fn one(app: &Router, path: &'static str) {
        let req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let body = resp.into_body().collect().await.expect("body");
        std::hint::black_box(body);
    }

    /// Sends `GET path` through `app` from the client `peer` (axum's `ConnectInfo`, as
    /// `into_make_service_with_connect_info` sets it) and reads the body to its end.
    #[inline]
    pub async fn one_from(app: &Router, path: &'static str, peer: std::net::SocketAddr) {
        let mut req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let body = resp.into_body().collect().await.expect("body");
        std::hint::black_box(body);
    }

    /// The client address number `i` of `keys` distinct ones (`10.x.y.z`).
    #[inline]
    pub fn peer(i: u64, keys: u64) -> std::net::SocketAddr {
        let n = (i % keys.max(1)) as u32;
        std::net::SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | n), 40_000))
    }

    /// `iters` requests on each of two threads hammering one shared router, each thread on
    /// its own runtime; returns the time of the slower thread (for criterion's
    /// `iter_custom`).
    pub fn two_threads(app: &Router, path: &'static str, iters: u64) -> Duration {
        two_threads_keys(app, path, iters, 1)
    }

    /// [`two_threads`], each request from one of `keys` client addresses.
    pub fn two_threads_keys(app: &Router, path: &'static str, iters: u64, keys: u64) -> Duration {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let app = app.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    runtime().block_on(async {
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..iters {
                            one_from(&app, path, peer(i, keys)).await;
                        }
                        start.elapsed()
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::{Request, Response};
    use http_body::{Body, Frame};

    /// A pass-through layer that wraps the response body and does nothing else: what axum
    /// charges any middleware that must see the end of the body.
    #[derive(Clone, Copy, Debug)]
    pub struct NoopLayer;

    /// The service of [`NoopLayer`].
    #[derive(Clone, Debug)]
    pub struct Noop<S>(S);

    impl<S> tower::Layer<S> for NoopLayer {
        type Service = Noop<S>;
        fn layer(&self, inner: S) -> Noop<S> {
            Noop(inner)
        }
    }

    /// The body of [`Noop`].
    #[derive(Debug)]
    pub struct NoopBody<B>(B);

    impl<B: Body + Unpin> Body for NoopBody<B> {
        type Data = B::Data;
        type Error = B::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_end_stream()
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.0.size_hint()
        }
    }

    impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Noop<S>
    where
        S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
        S::Future: Send + 'static,
        ResB: Body + Unpin,
    {
        type Response = Response<NoopBody<ResB>>;
        type Error = S::Error;
        type Future =
            futures_util::future::MapOk<S::Future, fn(Response<ResB>) -> Response<NoopBody<ResB>>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }
        fn call(&mut self, req: Request<ReqB>) -> Self::Future {
            use futures_util::TryFutureExt;
            self.0.call(req).map_ok(|r| r.map(NoopBody))
        }
    }
}

/// A span sink that keeps every exported span, for a test to read.
#[derive(Clone, Debug, Default)]
pub struct MemorySink(
    pub std::sync::Arc<std::sync::Mutex<Vec<garrison::garrison_trace::SpanRecord>>>,
);

impl garrison::garrison_trace::SpanSink for MemorySink {
    fn export(
        &self,
        batch: Vec<garrison::garrison_trace::SpanRecord>,
    ) -> garrison::garrison_trace::BoxFuture<'_, Result<(), String>> {
        self.0.lock().unwrap().extend(batch);
        Box::pin(async { Ok(()) })
    }
}

/// A log writer into memory (`json_logs().with_writer(buffer.clone())`), for a test to read.
#[derive(Clone, Debug, Default)]
pub struct LogBuffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `cmd` with `input` on its standard input: whether it succeeded, and what it wrote
/// (standard output, then standard error).
pub fn run_with_input(cmd: &mut Command, input: &str) -> (bool, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Runs `promtool check metrics` on `text` and fails with its report on any problem.
pub fn promtool_check(promtool: &std::path::Path, text: &str) {
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let (ok, report) = run_with_input(&mut cmd, text);
    assert!(
        ok,
        "promtool rejected the output:\n{report}\n--- output ---\n{text}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool found problems:\n{report}"
    );
}

/// The repository README's code, compiled as doctests so that it cannot rot (fragments are
/// marked `ignore`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
