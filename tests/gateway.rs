//! The gateway end to end, over real sockets on loopback: proxying (streaming both ways,
//! headers, h2c), upstream failures (502, 504, ejection, retry), the admin API, and the
//! faults of issue 8 under load (upstream killed, Redis killed, reload, graceful shutdown,
//! slow clients and oversized heads).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garrison_gateway::{Gateway, GatewayConfig};
use garrison_workspace::{get, post, send, TestResponse};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const TOKEN: &str = "test-admin-token";

/// An upstream server on `listener` answering with `handler`; abort the handle to kill it
/// (its listener closes: new connections are refused).
fn upstream_on<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        // dropping the JoinSet (when aborted) closes every connection too
    })
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

async fn upstream<F, Fut>(handler: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, upstream_on(l, handler))
}

/// Answers with what it saw: method, path, version and headers, as JSON.
async fn echo(req: Request<Incoming>) -> Response<BoxBody> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(k.to_string(), v.to_str().unwrap_or("?").into());
    }
    let seen = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::new(full(seen.to_string()))
}

struct Running {
    gateway: Gateway,
    addr: SocketAddr,
    admin: SocketAddr,
    served: JoinHandle<()>,
}

/// The gateway of `toml` (plus the test's admin token) on free loopback ports.
async fn gateway(toml: &str) -> Running {
    let config = GatewayConfig::from_toml(&with_token(toml)).unwrap();
    start(Gateway::new(config).await.unwrap()).await
}

fn with_token(toml: &str) -> String {
    let line = format!("admin_token = \"{TOKEN}\"\n");
    match toml.find("[gateway]\n") {
        Some(i) => {
            let at = i + "[gateway]\n".len();
            format!("{}{line}{}", &toml[..at], &toml[at..])
        }
        None => format!("[gateway]\n{line}{toml}"),
    }
}

async fn start(gateway: Gateway) -> Running {
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
    let g = gateway.clone();
    let served = tokio::spawn(async move {
        g.serve(main, Some(admin)).await.unwrap();
    });
    Running {
        gateway,
        addr,
        admin: admin_addr,
        served,
    }
}

fn json(r: &TestResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The admin API's view of the breaker `name`.
async fn breaker(gw: &Running, name: &str) -> serde_json::Value {
    let auth = bearer();
    let list = json(&get(gw.admin, "/admin/breakers", &[("authorization", &auth)]).await);
    let found = list["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .cloned();
    found.unwrap_or_else(|| panic!("no breaker {name} in {list}"))
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_forwarded_with_forwarded_headers_and_without_hop_by_hop_ones() {
    let (up, _u) = upstream(echo).await;
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.api]
        prefix = "/api"
        upstream = "app"
        strip_prefix = true
        [gateway.routes.rest]
        prefix = "/"
        upstream = "app"
        "#
    ))
    .await;
    let r = get(
        gw.addr,
        "/api/users/7?x=1",
        &[
            ("host", "shop.example"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("x-forwarded-for", "203.0.113.9"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = json(&r);
    assert_eq!(
        seen["path"], "/users/7?x=1",
        "the prefix is stripped, the query kept"
    );
    let h = &seen["headers"];
    assert_eq!(h["host"], "shop.example", "Host is preserved");
    assert!(
        h.get("x-hop").is_none() && h.get("proxy-authorization").is_none(),
        "{h}"
    );
    assert!(h.get("connection").is_none_or(|v| v == "keep-alive"), "{h}");
    // the client is no trusted proxy: what it said of its origin is replaced
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["forwarded"], "for=127.0.0.1;host=shop.example;proto=http");
    assert_eq!(
        h["x-forwarded-prefix"], "/api",
        "the stripped prefix, for the app's URLs"
    );
    // the caller's trace goes on, under a new span of the gateway's
    let tp = h["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"), "a child span id: {tp}");
    assert!(h.get("x-request-id").is_some());
    // the response carries the stack's headers
    assert!(r.headers.contains_key("x-ratelimit-limit"));
    assert!(r.headers.contains_key("x-request-id"));
    // a route that strips nothing sends no prefix
    let seen = json(&get(gw.addr, "/users/7", &[]).await);
    assert_eq!(seen["path"], "/users/7");
    assert!(
        seen["headers"].get("x-forwarded-prefix").is_none(),
        "{seen}"
    );
}

/// Sends `head` (a whole request head, raw) to `gw` and returns the status line and body.
async fn raw_request(gw: SocketAddr, head: &str) -> (String, String) {
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let (up, _u) = upstream(echo).await;
    let routes = format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n\
         [gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    );
    let untrusted = gateway(&routes).await;
    let trusted = gateway(&format!(
        "{routes}[ratelimit]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
    ))
    .await;
    // two X-Forwarded-For lines, and every header a client could forge
    let head = "GET /who HTTP/1.1\r\nhost: shop.example\r\n\
                x-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 198.51.100.7\r\n\
                x-forwarded-host: evil.example\r\nx-forwarded-proto: https\r\n\
                x-forwarded-prefix: /evil\r\nx-real-ip: 10.9.9.9\r\n\
                forwarded: for=10.9.9.9;proto=https\r\nconnection: close\r\n\r\n";
    let (status, body) = raw_request(untrusted.addr, head).await;
    assert!(status.contains(" 200 "), "{status}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-host"], "shop.example", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;host=shop.example;proto=http",
        "{h}"
    );
    assert!(
        h.get("x-forwarded-prefix").is_none() && h.get("x-real-ip").is_none(),
        "{h}"
    );

    let (status, body) = raw_request(trusted.addr, head).await;
    assert!(status.contains(" 200 "), "{status}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &seen["headers"];
    // every line kept, the gateway's peer appended
    assert_eq!(
        h["x-forwarded-for"], "203.0.113.9, 198.51.100.7, 127.0.0.1",
        "{h}"
    );
    assert_eq!(h["x-forwarded-host"], "evil.example", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(
        h["forwarded"], "for=10.9.9.9;proto=https, for=127.0.0.1;host=shop.example;proto=http",
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_are_normalised_before_routing_limiting_and_forwarding() {
    let (up, _u) = upstream(echo).await;
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n\
         [gateway.routes.auth]\npath = \"/auth/login\"\nupstream = \"app\"\nratelimit = \"auth\"\n\
         [gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;
    for raw in [
        "/auth/login",
        "//auth/login",
        "/auth//login",
        "/./auth/login",
        "/x/../auth/login",
        "/x/%2e%2e/auth/login",
        "/x/%2E%2E/auth/login",
        "/%61uth/login",
        "/%61%75%74%68/%6C%6F%67%69%6E",
    ] {
        let (status, body) = raw_request(
            gw.addr,
            &format!("GET {raw}?q=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
        .await;
        // the auth policy (5 per 15 minutes) answers: the route is /auth/login's
        assert!(
            status.contains(" 200 ") || status.contains(" 429 "),
            "{raw}: {status}"
        );
        if status.contains(" 200 ") {
            let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(seen["path"], "/auth/login?q=1", "{raw}");
        }
    }
    let (allowed, limited, _) = gw
        .gateway
        .current()
        .garrison()
        .rate_limiter()
        .unwrap()
        .decisions("auth")
        .unwrap();
    assert_eq!(
        (allowed, limited),
        (5, 4),
        "every variant went through the auth policy"
    );
    for (raw, why) in [
        ("/a%2Fb", "encoded slash"),
        ("/a%5cb", "encoded slash"),
        ("/../etc/passwd", "above the root"),
        ("/a/%2e%2e/%2e%2e/etc/passwd", "above the root"),
        ("/a%zz", "malformed percent escape"),
    ] {
        let (status, body) = raw_request(
            gw.addr,
            &format!("GET {raw} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(status.contains(" 400 "), "{raw}: {status}");
        assert!(body.contains(why), "{raw}: {body}");
    }
    // other escapes stay escaped, upper-cased
    let seen = json(&get(gw.addr, "/files/a%c3%a9%20b", &[]).await);
    assert_eq!(seen["path"], "/files/a%C3%A9%20b");
    // two Host headers, or a Host the absolute-form target contradicts: 400 (RFC 9112 §3.2)
    let (status, _) = raw_request(
        gw.addr,
        "GET /x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 400 "), "{status}");
    let (status, _) = raw_request(
        gw.addr,
        "GET http://a.example/x HTTP/1.1\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 400 "), "{status}");
}

/// An upstream that speaks WebSocket's opening handshake (RFC 6455 §4) as far as a proxy
/// can tell: to `Upgrade: websocket` it answers `101` and then, on the switched connection,
/// greets, echoes whatever comes, and closes once the client has closed its side. Other
/// upgrades get `426`; requests without one `200 plain`. Keeps the last request's headers.
async fn websocket_upstream() -> (SocketAddr, Arc<std::sync::Mutex<http::HeaderMap>>) {
    let seen = Arc::new(std::sync::Mutex::new(http::HeaderMap::new()));
    let kept = seen.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    *seen.lock().unwrap() = req.headers().clone();
                    async move {
                        let r = Response::builder();
                        let Some(upgrade) = req.headers().get("upgrade").cloned() else {
                            return Ok::<_, Infallible>(r.body(full("plain")).unwrap());
                        };
                        if upgrade != "websocket" {
                            return Ok(r.status(426).body(full("websocket only")).unwrap());
                        }
                        let switched = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(switched.await.expect("switched"));
                            io.write_all(b"hello from upstream").await.unwrap();
                            let mut buf = [0u8; 1024];
                            loop {
                                match io.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                                }
                            }
                            // the client closed its side: close ours
                        });
                        Ok(r.status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                            .body(full(""))
                            .unwrap())
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, kept)
}

/// A WebSocket opening handshake for `path`, with `upgrade` as the protocol, sent over a
/// new connection to `gw`; the connection and the answer's head, lower-cased.
async fn handshake(gw: SocketAddr, path: &str, upgrade: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: chat.example\r\nconnection: keep-alive, Upgrade\r\n\
         upgrade: {upgrade}\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut c).await.expect("an answer's head");
    (c, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

async fn read_exactly(c: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
        .await
        .expect("bytes within 10 s")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_handshake_through_the_stack_becomes_a_tunnel_both_ways() {
    let (up, seen) = websocket_upstream().await;
    let gw = one_route_gateway(up, "", "").await;
    let (mut c, head) = handshake(gw.addr, "/chat", "websocket").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for line in [
        "connection: upgrade",
        "upgrade: websocket",
        "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
    ] {
        assert!(head.contains(line), "{line} in {head}");
    }
    // the handshake went through the stack: it has a request id and rate-limit headers
    assert!(head.contains("x-request-id: "), "{head}");
    assert!(head.contains("x-ratelimit-remaining: "), "{head}");
    {
        let h = seen.lock().unwrap();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert!(h.contains_key("traceparent"), "{h:?}");
    }
    // the upstream speaks first, then each message comes back, in order
    assert_eq!(read_exactly(&mut c, 19).await, "hello from upstream");
    for i in 0..20 {
        let msg = format!("message {i:02}");
        c.write_all(msg.as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut c, msg.len()).await, msg);
    }
    // a large message crosses whole
    let big: String = (0..64 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    c.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(read_exactly(&mut c, big.len()).await, big);
    // meanwhile other requests are served as before
    let r = get(gw.addr, "/plain", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "plain"));
    assert!(metric(&gw, "garrison_gateway_tunnels_open 1").await);
    // the client's close reaches the upstream, whose close comes back
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    eventually("the tunnel counted as closed", async || {
        metric(
            &gw,
            "garrison_gateway_tunnels_ended_total{end=\"closed\"} 1",
        )
        .await
            && metric(&gw, "garrison_gateway_tunnels_open 0").await
    })
    .await;
    // every byte each way: 20 messages of 10 bytes and the 64 KiB one, both ways, and the
    // upstream's greeting
    let sent = 20 * 10 + big.len();
    for line in [
        format!("garrison_gateway_tunnel_bytes_total{{direction=\"client_to_upstream\"}} {sent}"),
        format!(
            "garrison_gateway_tunnel_bytes_total{{direction=\"upstream_to_client\"}} {}",
            sent + 19
        ),
    ] {
        assert!(metric(&gw, &line).await, "{line}");
    }
}

/// Whether the gateway's `/metrics` has the line `line`.
async fn metric(gw: &Running, line: &str) -> bool {
    let scrape = get(gw.admin, "/metrics", &[]).await;
    scrape.body.lines().any(|l| l == line)
}

/// A real WebSocket peer on both ends: the Python `websockets` library's echo server as
/// the upstream and its client through the gateway (`tests/peers/websocket_peer.py`):
/// framing, a 1 MiB binary message, ping and pong, and the closing handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_websockets_library_talks_to_itself_through_the_gateway() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let probe = Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "python3 with the websockets package is needed: run `just services` or \
         `python3 -m pip install -r tests/peers/requirements.txt`"
    );
    let mut peer = Command::new("python3")
        .arg("tests/peers/websocket_peer.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the WebSocket peer");
    let mut lines = std::io::BufReader::new(peer.stdout.take().unwrap()).lines();
    let port: u16 = tokio::task::block_in_place(|| lines.next())
        .expect("the peer's server port")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["127.0.0.1:{port}"]
        [gateway.routes.ws]
        prefix = "/ws"
        upstream = "app"
        strip_prefix = true
        "#
    ))
    .await;
    writeln!(peer.stdin.take().unwrap(), "{}", gw.addr).unwrap();
    let line = tokio::task::block_in_place(|| lines.next());
    let status = tokio::task::block_in_place(|| peer.wait_with_output()).unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    let line = match line {
        Some(Ok(l)) if status.status.success() => l,
        other => panic!("the peer failed ({:?}): {other:?}\n{stderr}", status.status),
    };
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["text"], "hello through the gateway", "{seen}");
    assert_eq!(seen["binary_echoed"], true, "{seen}");
    assert_eq!(seen["pong"], true, "{seen}");
    assert_eq!(seen["close_code"], 1000, "{seen}");
    let up = &seen["upstream_saw"];
    assert_eq!(up["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert!(
        up["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "{seen}"
    );
    let resp = &seen["response_headers"];
    assert_eq!(resp["upgrade"], "websocket", "{seen}");
    assert_eq!(
        resp["x-request-id"], up["x-request-id"],
        "the handshake's request id is the one the upstream got: {seen}"
    );
    assert!(resp["x-ratelimit-remaining"].is_string(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_a_route_does_not_allow_or_an_upstream_refuses_stay_plain_http() {
    let (up, seen) = websocket_upstream().await;
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.closed]
        prefix = "/closed"
        upstream = "app"
        upgrades = []
        [gateway.routes.rest]
        prefix = "/"
        upstream = "app"
        upgrades = ["websocket", "x-other"]
        "#
    ))
    .await;
    // not allowed on this route: the upgrade is removed, and the request is an ordinary one
    let (_c, head) = handshake(gw.addr, "/closed/chat", "websocket").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!seen.lock().unwrap().contains_key("upgrade"));
    // a protocol no route allows: the same
    let (_c, head) = handshake(gw.addr, "/chat", "h2c").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!seen.lock().unwrap().contains_key("upgrade"));
    // allowed here, and refused by the upstream: its answer comes back as it is
    let (_c, head) = handshake(gw.addr, "/chat", "x-other").await;
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert_eq!(seen.lock().unwrap()["upgrade"], "x-other");
    // an invalid protocol name is a configuration error, with its path
    let bad = GatewayConfig::from_toml(
        "[gateway.upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n\
         [gateway.routes.r]\nprefix = \"/\"\nupstream = \"a\"\nupgrades = [\"web socket\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("gateway.routes.r.upgrades[0]"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_that_moves_nothing_is_closed_after_its_idle_timeout() {
    let (up, _seen) = websocket_upstream().await;
    let gw = one_route_gateway(up, "", "tunnel_idle_timeout = \"200ms\"").await;
    let (mut c, head) = handshake(gw.addr, "/chat", "websocket").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(read_exactly(&mut c, 19).await, "hello from upstream");
    // nothing more is sent either way: the gateway closes the tunnel (no client close)
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    eventually("the tunnel counted as idle", async || {
        metric(&gw, "garrison_gateway_tunnels_ended_total{end=\"idle\"} 1").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_keeps_its_place_among_max_connections() {
    let (up, _seen) = websocket_upstream().await;
    let gw = one_route_gateway(up, "max_connections = 1", "").await;
    let (mut c, head) = handshake(gw.addr, "/chat", "websocket").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(read_exactly(&mut c, 19).await, "hello from upstream");
    // the one place is the tunnel's: another connection waits in the backlog
    let gw_addr = gw.addr;
    let mut waiting = tokio::spawn(async move { get(gw_addr, "/plain", &[]).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "served while the tunnel held the only place"
    );
    // the tunnel ends: its place goes to the waiting connection
    c.shutdown().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the tunnel closed")
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_closes_the_open_tunnels_at_once() {
    let (up, _seen) = websocket_upstream().await;
    // a grace longer than the test waits: the shutdown must not wait for the tunnel
    let gw = one_route_gateway(up, "shutdown_grace = \"120s\"", "").await;
    let (mut c, head) = handshake(gw.addr, "/chat", "websocket").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(read_exactly(&mut c, 19).await, "hello from upstream");
    c.write_all(b"still here").await.unwrap();
    assert_eq!(read_exactly(&mut c, 10).await, "still here");
    gw.gateway.shutdown();
    tokio::time::timeout(Duration::from_secs(20), gw.served)
        .await
        .expect("the shutdown ends: an open tunnel does not hold it up")
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the tunnel is closed")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_over_their_routes_limit_get_413_and_spare_the_upstream() {
    // counts the requests that reach it, and the bodies it read whole
    let reached = Arc::new(AtomicU64::new(0));
    let whole = Arc::new(AtomicU64::new(0));
    let (r, w) = (reached.clone(), whole.clone());
    let (up, _u) = upstream(move |req: Request<Incoming>| {
        let (r, w) = (r.clone(), w.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            match req.into_body().collect().await {
                Ok(b) => {
                    w.fetch_add(1, Ordering::SeqCst);
                    Response::new(full(b.to_bytes().len().to_string()))
                }
                Err(_) => Response::new(full("cut")),
            }
        }
    })
    .await;
    let gw = gateway(&format!(
        r#"
        [gateway]
        max_body_bytes = 1024
        [gateway.upstreams.app]
        addresses = ["{up}"]
        eject_after = 1
        [gateway.routes.big]
        prefix = "/big"
        upstream = "app"
        max_body_bytes = 0
        [gateway.routes.rest]
        prefix = "/"
        upstream = "app"
        "#
    ))
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |path: &str, n: usize| {
        let req = Request::post(format!("http://{}{path}", gw.addr))
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap();
        let c = client.clone();
        async move {
            let resp = c.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    // at the limit: forwarded
    assert_eq!(send("/small", 1024).await, (StatusCode::OK, "1024".into()));
    // its Content-Length says more: 413 at once, and the upstream is not asked
    let before = reached.load(Ordering::SeqCst);
    let (status, body) = send("/small", 1025).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"], "the request body is larger than 1024 bytes");
    assert_eq!(e["status"], 413);
    assert_eq!(reached.load(Ordering::SeqCst), before);
    // streamed without a length, it is cut off on the way: 413, and the upstream never
    // gets the whole of it
    let whole_before = whole.load(Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    tokio::spawn(async move {
        for _ in 0..8 {
            let _ = tx.send(Ok(Frame::data(Bytes::from(vec![b'y'; 512])))).await;
        }
    });
    let resp = Client::builder(TokioExecutor::new())
        .build_http()
        .request(
            Request::post(format!("http://{}/small", gw.addr))
                .body(StreamBody::new(tokio_stream(rx)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(whole.load(Ordering::SeqCst), whole_before);
    // the client's oversized bodies are not the upstream's fault: its address stays in
    // (one failure would eject it), and a route without a limit takes a large body
    assert_eq!(
        send("/big", 256 * 1024).await,
        (StatusCode::OK, (256 * 1024).to_string())
    );
    let auth = bearer();
    let ups = json(&get(gw.admin, "/admin/upstreams", &[("authorization", &auth)]).await);
    let address = &ups["upstreams"]["app"]["addresses"][0];
    assert_eq!(address["ejections"], 0, "{ups}");
    assert_eq!(address["failures_in_a_row"], 0, "{ups}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routes_own_timeout_takes_the_place_of_its_upstreams() {
    // the upstream answers after 800 ms
    let (up, _u) = upstream(|_| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("late"))
    })
    .await;
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        timeout = "300ms"
        [gateway.routes.longpoll]
        prefix = "/poll"
        upstream = "app"
        timeout = "10s"
        [gateway.routes.rest]
        prefix = "/"
        upstream = "app"
        "#
    ))
    .await;
    let r = get(gw.addr, "/poll/events", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "late"));
    let r = get(gw.addr, "/other", &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    let bad = GatewayConfig::from_toml(
        "[gateway.upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n\
         [gateway.routes.r]\nprefix = \"/\"\nupstream = \"a\"\ntimeout = \"0s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("gateway.routes.r.timeout"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_drips_its_body_is_cut_off_by_the_upstream_timeout() {
    // the upstream reads each body whole before it answers
    let (up, _u) = upstream(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(b.to_bytes().len().to_string())),
            Err(_) => Response::new(full("cut")),
        }
    })
    .await;
    let gw = one_route_gateway(up, "", "timeout = \"500ms\"").await;
    // a body of 1000 bytes announced, then sent a byte at a time (a slow POST): it holds
    // the upstream's connection only until the upstream's timeout
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let gw_addr = gw.addr;
    let others = tokio::spawn(async move {
        for _ in 0..10 {
            assert_eq!(post(gw_addr, "/", "fast").await.body, "4");
        }
    });
    let mut answer = Vec::new();
    for _ in 0..200 {
        if c.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    // the client kept the upstream waiting: its fault, not the upstream's
    assert!(answer.starts_with("http/1.1 408"), "{answer:?}");
    others.await.unwrap();
}

/// The request, the answer's status line, and nothing more: one request on its own
/// connection, written raw.
async fn raw_exchange(gw: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(request).await.unwrap();
    let head = read_head(&mut c).await.unwrap_or_default();
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_dripped_bodies_are_the_clients_fault_not_the_upstreams() {
    // an upstream that reads each body whole before it answers, on two addresses
    let handler = |req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(b.to_bytes().len().to_string())),
            Err(_) => Response::new(full("cut")),
        }
    };
    let (a, _ua) = upstream(handler).await;
    let (b, _ub) = upstream(handler).await;
    let gw = gateway(&format!(
        "[gateway]
[gateway.upstreams.app]
addresses = [\"{a}\", \"{b}\"]
timeout = \"400ms\"
         [gateway.routes.rest]
prefix = \"/\"
upstream = \"app\"
         [breaker]
profile = \"critical\"
"
    ))
    .await;
    // a chunked body whose third chunk size is not hex, and one cut short by the client
    for _ in 0..6 {
        let status = raw_exchange(
            gw.addr,
            b"POST /orders HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n5\r\nworld\r\nZZ\r\nboom\r\n0\r\n\r\n",
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
    }
    for _ in 0..3 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nshort")
            .await
            .unwrap();
        // the client goes away with 95 bytes owed
        drop(c);
    }
    // a client that drips its body past the upstream's timeout
    for _ in 0..3 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nx")
            .await
            .unwrap();
        let head = read_head(&mut c).await.unwrap_or_default();
        let status = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
    }
    // the route's breaker saw no failure, and no address was ejected
    let br = breaker(&gw, "server:/{*path}").await;
    assert_eq!(br["state"], "closed", "{br}");
    assert_eq!(br["window"]["failures"].as_u64().unwrap_or(0), 0, "{br}");
    let r = get(
        gw.admin,
        "/admin/upstreams",
        &[("authorization", &bearer())],
    )
    .await;
    for addr in json(&r)["upstreams"]["app"]["addresses"]
        .as_array()
        .unwrap()
    {
        assert_eq!(addr["ejections"], 0, "{addr}");
    }
    // and an honest client is served
    assert_eq!(post(gw.addr, "/orders", "fine").await.body, "4");
}

/// An upstream that counts the connections it accepted and those that closed; its answers
/// carry `Connection: close` while `close` is set.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    close: Arc<AtomicBool>,
}

async fn counted_upstream() -> Counted {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = Counted {
        addr: l.local_addr().unwrap(),
        accepted: Arc::default(),
        closed: Arc::default(),
        close: Arc::default(),
    };
    let (accepted, closed, close) = (c.accepted.clone(), c.closed.clone(), c.close.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (closed, close) = (closed.clone(), close.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let close = close.load(Ordering::SeqCst);
                    async move {
                        let mut resp = Response::new(full("pooled"));
                        if close {
                            resp.headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_connections_are_reused_given_up_on_close_and_closed_when_idle() {
    let up = counted_upstream().await;
    let gw = one_worker_gateway(up.addr, "pool_idle_timeout = \"200ms\"").await;
    for _ in 0..5 {
        let r = get(gw.addr, "/x", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "pooled"));
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection served every request in turn"
    );
    // an answer with `Connection: close` ends its connection; the next request opens one
    up.close.store(true, Ordering::SeqCst);
    assert_eq!(get(gw.addr, "/x", &[]).await.status, StatusCode::OK);
    up.close.store(false, Ordering::SeqCst);
    assert_eq!(get(gw.addr, "/x", &[]).await.status, StatusCode::OK);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    eventually("the closed connection is gone", async || {
        up.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    // left idle past pool_idle_timeout, the gateway closes it
    eventually("the idle connection is closed by the gateway", async || {
        up.closed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(get(gw.addr, "/x", &[]).await.status, StatusCode::OK);
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        3,
        "a fresh connection after"
    );
}

/// The keep-alive race made certain: the upstream answers the first request of each
/// connection and keeps it open, then reads the second request and closes without an
/// answer, as if its idle close had crossed the request on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_request_lost_to_a_closing_reused_connection_goes_again_once() {
    for then in [Then::ReadNextAndClose, Then::ResetNext] {
        lost_to_a_closing_reused_connection(then).await;
    }
}

async fn lost_to_a_closing_reused_connection(then: Then) {
    let (up, accepted) = ok_once_upstream(then).await;
    let gw = one_worker_gateway(up, "").await;
    let status = |r: TestResponse| (r.status, r.body);
    assert_eq!(
        status(get(gw.addr, "/a", &[]).await),
        (StatusCode::OK, "ok".into())
    );
    // over the reused connection, lost, then again over a new one
    assert_eq!(
        status(get(gw.addr, "/b", &[]).await),
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one new connection for the replay"
    );
    // a POST is not idempotent: lost the same way, it is not sent again
    let r = send(gw.addr, Method::POST, "/c", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(r.body.contains("upstream connection failed"), "{}", r.body);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the POST went out once");
    assert_eq!(
        status(get(gw.addr, "/d", &[]).await),
        (StatusCode::OK, "ok".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_closes_after_each_answer_costs_no_request() {
    // keep-alive by the protocol, but the upstream closes every connection after its
    // answer without saying so: the pooled connection is dead when the next request comes
    let (up, accepted) = ok_once_upstream(Then::Close).await;
    let gw = one_worker_gateway(up, "").await;
    for i in 0..20 {
        let r = get(gw.addr, "/x", &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20, "one connection each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_stream_both_ways_without_being_buffered() {
    // the upstream sends its first chunk, then waits until the client has it: a gateway
    // that buffered whole bodies would never deliver it
    let (release_tx, release_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let (up, _u) = upstream(move |req: Request<Incoming>| {
        let release = release_rx.clone();
        async move {
            if req.uri().path() == "/upload" {
                // counts the request body as it streams in
                let mut body = req.into_body();
                let mut n = 0;
                while let Some(Ok(f)) = body.frame().await {
                    n += f.data_ref().map_or(0, |d| d.len());
                }
                return Response::new(full(format!("{n}")));
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                    .await;
                release.lock().await.recv().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            let stream = tokio_stream(rx);
            Response::new(StreamBody::new(stream).boxed())
        }
    })
    .await;
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n[gateway.routes.all]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .request(
            Request::get(format!("http://{}/stream", gw.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives before the upstream's body ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    release_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");

    // a 4 MiB request body sent in chunks arrives whole
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for _ in 0..64 {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'x'; 65536]))))
                .await;
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::post(format!("http://{}/upload", gw.addr))
                .body(StreamBody::new(tokio_stream(rx)))
                .unwrap(),
        )
        .await
        .unwrap();
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, (64 * 65536).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_before_the_request_body_ends_holds_up_no_later_request() {
    // the upstream answers a POST at once, reads nothing more of that connection and keeps
    // it open; the client's body never ends. The connection is not idle when the answer
    // has ended (its request is still being written): it must not be handed to the next
    // request, which would wait behind a body that never comes and end in a 504
    let up = raw_upstream(|mut stream| async move {
        while let Some(head) = read_head(&mut stream).await {
            if head.starts_with(b"POST") {
                let _ = stream
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await;
                std::future::pending::<()>().await;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = one_worker_gateway(up, "timeout = \"3s\"").await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"the start of a body"))))
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::post(format!("http://{}/upload", gw.addr))
                .body(StreamBody::new(tokio_stream(rx)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for _ in 0..3 {
        let r = get(gw.addr, "/next", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    }
    drop(tx); // the body ends only now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_move_in_lockstep_with_their_far_ends() {
    // each side sends its next chunk only after the far end has the last one: a request
    // that waits for its response head while its body trickles in, and a response body
    // that trickles out, both on one upstream connection the gateway drives in the
    // request's own task (a wake lost there would stall a chunk until the timeout)
    const CHUNKS: usize = 8;
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (more_tx, more_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let more_rx = Arc::new(tokio::sync::Mutex::new(more_rx));
    let (up, _u) = upstream(move |req: Request<Incoming>| {
        let got = got_tx.clone();
        let more = more_rx.clone();
        async move {
            if req.uri().path() == "/up" {
                let mut body = req.into_body();
                let mut n = 0;
                while let Some(Ok(f)) = body.frame().await {
                    if f.data_ref().is_some_and(|d| !d.is_empty()) {
                        n += 1;
                        let _ = got.send(());
                    }
                }
                return Response::new(full(format!("{n}")));
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
            tokio::spawn(async move {
                let mut more = more.lock().await;
                for i in 0..CHUNKS {
                    if i > 0 && more.recv().await.is_none() {
                        return;
                    }
                    let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{i};"))))).await;
                }
            });
            Response::new(StreamBody::new(tokio_stream(rx)).boxed())
        }
    })
    .await;
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\ntimeout = \"30s\"\n[gateway.routes.all]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;
    let limit = Duration::from_secs(20); // a stalled chunk, not a slow one

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let producer = tokio::spawn(async move {
        for i in 0..CHUNKS {
            if i > 0 {
                got_rx
                    .recv()
                    .await
                    .expect("the upstream has the last chunk");
            }
            tx.send(Ok(Frame::data(Bytes::from(format!("{i};")))))
                .await
                .unwrap();
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(
        limit,
        client.request(
            Request::post(format!("http://{}/up", gw.addr))
                .body(StreamBody::new(tokio_stream(rx)))
                .unwrap(),
        ),
    )
    .await
    .expect("every chunk of the request body reached the upstream")
    .unwrap();
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, CHUNKS.to_string());
    producer.await.unwrap();

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .request(
            Request::get(format!("http://{}/down", gw.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut text = String::new();
    for i in 0..CHUNKS {
        let frame = tokio::time::timeout(limit, body.frame())
            .await
            .unwrap_or_else(|_| panic!("chunk {i} of the response body arrives"))
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        let _ = more_tx.send(());
    }
    let expected: String = (0..CHUNKS).map(|i| format!("{i};")).collect();
    assert_eq!(text, expected);
    assert!(body.collect().await.unwrap().to_bytes().is_empty());
}

/// An upstream on raw TCP, for answers hyper would not give: `serve` takes each connection
/// it accepts, in a task of its own.
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = l.accept().await {
                tokio::spawn(serve(stream));
            }
        }
    });
    addr
}

/// What [`ok_once_upstream`] does after its answer, before it closes the connection.
#[derive(Clone, Copy)]
enum Then {
    /// Nothing.
    Close,
    /// Reads the next request head (the close is an end of stream to the gateway).
    ReadNextAndClose,
    /// Waits for the next request, leaves it unread and closes abortively (a reset).
    ResetNext,
}

/// An upstream that answers the first request of each connection with `200 ok`, does what
/// `then` says, and closes the connection without an answer or a `Connection: close`.
/// Counts the connections it accepts.
async fn ok_once_upstream(then: Then) -> (SocketAddr, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let up = raw_upstream(move |mut stream| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if read_head(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                match then {
                    Then::Close => {}
                    Then::ReadNextAndClose => {
                        let _ = read_head(&mut stream).await;
                    }
                    // the next request is left unread, and the close is abortive (no
                    // lingering): the kernel answers it with a reset, never an end of stream
                    Then::ResetNext => {
                        let _ = stream.peek(&mut [0u8; 1]).await;
                        let _ = stream.set_zero_linger();
                    }
                }
            }
        }
    })
    .await;
    (up, accepted)
}

/// A gateway with one worker in front of the one address `up`, every path routed to it;
/// `upstream` holds more lines of the upstream's table (`timeout = "3s"`), one per line.
async fn one_worker_gateway(up: impl std::fmt::Display, upstream: &str) -> Running {
    one_route_gateway(up, "workers = 1", upstream).await
}

/// A gateway in front of the one address `up`, every path routed to it; `section` and
/// `upstream` hold more lines of the `[gateway]` table and of the upstream's, one per line.
async fn one_route_gateway(up: impl std::fmt::Display, section: &str, upstream: &str) -> Running {
    gateway(&format!(
        "[gateway]\n{section}\n[gateway.upstreams.app]\naddresses = [\"{up}\"]\n{upstream}\n\
         [gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await
}

/// One request head read from `stream`, a byte at a time so that nothing after it is taken;
/// `None` when the stream ends or fails first.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(byte[0]),
        }
    }
    Some(head)
}

/// A stream of an mpsc receiver (tokio-stream is not a dependency of this package).
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2c_on_both_sides() {
    let (up, _u) = upstream(echo).await;
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\nprotocol = \"h2c\"\n[gateway.routes.all]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let resp = client
        .request(
            Request::get(format!("http://{}/x", gw.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.version(),
        Version::HTTP_2,
        "the client spoke h2c to the gateway"
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        seen["version"], "HTTP/2.0",
        "the gateway spoke h2c to the upstream"
    );
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.addr.to_string());

    // a request without a body that one h2c address refuses goes to the other
    let refusing = garrison_workspace::free_port();
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\", \"127.0.0.1:{refusing}\"]\nprotocol = \"h2c\"\n\
         eject_after = 100\n[gateway.routes.all]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;
    for i in 0..4 {
        let r = get(gw.addr, "/y", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        assert_eq!(json(&r)["version"], "HTTP/2.0", "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_upstream_is_502_and_a_hanging_one_504_each_with_json() {
    let closed = garrison_workspace::free_port();
    // accepts connections and never answers
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.gone]
        addresses = ["127.0.0.1:{closed}"]
        [gateway.upstreams.hangs]
        addresses = ["{hang_addr}"]
        timeout = "300ms"
        [gateway.routes.gone]
        prefix = "/gone"
        upstream = "gone"
        [gateway.routes.hangs]
        prefix = "/hangs"
        upstream = "hangs"
        "#
    ))
    .await;
    let r = get(gw.addr, "/gone/x", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    let body = json(&r);
    assert_eq!(body["error"], "upstream unreachable");
    assert_eq!(body["upstream"], "gone");

    let r = tokio::time::timeout(Duration::from_secs(10), get(gw.addr, "/hangs/x", &[]))
        .await
        .expect("the gateway answers a hanging upstream within its timeout");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&r)["error"], "upstream timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn addresses_take_turns_and_a_dead_one_is_ejected_while_requests_still_succeed() {
    // `a` answers with the request body it read after its name
    let (a, _ua) = upstream(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
        Response::new(full(format!("a{body}")))
    })
    .await;
    let (b, ub) = upstream(|_| async { Response::new(full("b")) }).await;
    let gw = gateway(&format!(
        r#"
        [health]
        details = "always"
        [gateway.upstreams.app]
        addresses = ["{a}", "http://{b}"]
        eject_after = 4
        eject_for = "1h"
        [gateway.routes.all]
        prefix = "/"
        upstream = "app"
        "#
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(gw.addr, "/", &[]).await.body);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);

    ub.abort();
    // wait until b refuses connections
    while TcpStream::connect(b).await.is_ok() {
        tokio::task::yield_now().await;
    }
    // GETs and POSTs with a body in turn: each that b refuses goes to a, the POST's body
    // with it (none of it was sent), until b's fourth refusal in a row ejects it
    for i in 0..10 {
        let r = if i % 2 == 0 {
            get(gw.addr, "/", &[]).await
        } else {
            post(gw.addr, "/", "-posted").await
        };
        let want = if i % 2 == 0 { "a" } else { "a-posted" };
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, want),
            "request {i}: retried on a"
        );
    }
    let r = get(
        gw.admin,
        "/admin/upstreams",
        &[("authorization", &bearer())],
    )
    .await;
    let addrs = &json(&r)["upstreams"]["app"]["addresses"];
    assert_eq!(addrs[1]["address"], b.to_string());
    assert!(addrs[1]["ejected_for_ms"].as_u64().unwrap() > 0, "{addrs}");
    assert_eq!(addrs[1]["ejections"], 1);
    assert!(addrs[0]["ejected_for_ms"].is_null());
    // and in the metrics, which the real promtool accepts
    let scrape = get(gw.admin, "/metrics", &[]).await;
    for line in [
        format!("garrison_gateway_upstream_address_up{{upstream=\"app\",address=\"{a}\"}} 1"),
        format!("garrison_gateway_upstream_address_up{{upstream=\"app\",address=\"{b}\"}} 0"),
        format!("garrison_gateway_upstream_ejections_total{{upstream=\"app\",address=\"{b}\"}} 1"),
        // counted afresh once the address is out
        format!(
            "garrison_gateway_upstream_failures_in_a_row{{upstream=\"app\",address=\"{b}\"}} 0"
        ),
        "garrison_gateway_tunnels_open 0".to_owned(),
    ] {
        assert!(
            scrape.body.lines().any(|l| l == line),
            "{line} in\n{}",
            scrape.body
        );
    }
    let promtool = garrison_workspace::require_tool("promtool", "prometheus");
    garrison_workspace::promtool_check(&promtool, &scrape.body);
    // and on the deep health route: a warning that names it (the gateway itself stays ready)
    let want = format!("ejected: {b}");
    eventually(
        "the deep health route names the ejected address",
        async || {
            let r = get(gw.admin, "/health", &[]).await;
            let body = json(&r);
            let m = &body["checks"]["gateway-upstreams:app"][0];
            r.status == StatusCode::OK
                && body["status"] == "warn"
                && m["status"] == "warn"
                && m["output"] == want.as_str()
                && m["observedValue"] == 1
        },
    )
    .await;
    assert_eq!(
        get(gw.admin, "/health/ready", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_needs_its_token_and_works_the_breakers() {
    let (up, _u) = upstream(echo).await;
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.orders]
        path = "/orders/{{id}}"
        upstream = "app"
        breaker = "critical"
        priority = "high"
        [admission]
        enabled = true
        "#
    ))
    .await;
    for auth in [None, Some("Bearer wrong"), Some("test-admin-token")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = get(gw.admin, "/admin/breakers", &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    // probes and scrapes need no token
    assert_eq!(
        get(gw.admin, "/health/live", &[]).await.status,
        StatusCode::OK
    );
    assert!(get(gw.admin, "/metrics", &[])
        .await
        .body
        .contains("http_server_request_duration_seconds"));

    assert_eq!(get(gw.addr, "/orders/1", &[]).await.status, StatusCode::OK);
    let auth = bearer();
    let auth = [("authorization", auth.as_str())];
    let b = breaker(&gw, "server:/orders/{id}").await;
    assert_eq!(b["state"], "closed");
    assert_eq!(b["window"]["calls"], 1);

    let name = "server%3A%2Forders%2F%7Bid%7D";
    let r = send(
        gw.admin,
        Method::POST,
        &format!("/admin/breakers/{name}/open"),
        &auth,
    )
    .await;
    assert_eq!(json(&r)["breaker"]["state"], "forced_open");
    let refused = get(gw.addr, "/orders/1", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));

    let r = send(
        gw.admin,
        Method::POST,
        &format!("/admin/breakers/{name}/reset"),
        &auth,
    )
    .await;
    assert_eq!(json(&r)["breaker"]["state"], "closed");
    assert_eq!(get(gw.addr, "/orders/1", &[]).await.status, StatusCode::OK);
    let r = send(
        gw.admin,
        Method::POST,
        &format!("/admin/breakers/{name}/disable"),
        &auth,
    )
    .await;
    assert_eq!(json(&r)["breaker"]["state"], "disabled");
    let r = send(gw.admin, Method::POST, "/admin/breakers/nope/reset", &auth).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let rl = json(&get(gw.admin, "/admin/ratelimit", &auth).await);
    assert_eq!(rl["store"]["kind"], "memory");
    assert!(rl["tracked_keys"].as_u64().unwrap() >= 1);
    let general = rl["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "general")
        .unwrap();
    assert_eq!(general["decisions"]["allowed"], 3);

    // admission: the orders route is admitted as high; nothing waits or is shed
    let adm = json(&get(gw.admin, "/admin/admission", &auth).await);
    assert_eq!(adm["enabled"], true);
    assert_eq!(adm["limit"], 64);
    assert_eq!(adm["in_flight"], 0);
    let high = &adm["classes"][1];
    assert_eq!(high["priority"], "high");
    assert_eq!(high["admitted"], 3, "{adm}");
    assert_eq!(high["shed"]["queue_full"], 0);

    // started without a file: nothing to read again, and nothing changes
    let r = send(gw.admin, Method::POST, "/admin/reload", &auth).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(&r)["generation"], 1);
}

/// `tasks` clients sending `GET path` in a loop until `stop`; returns (statuses, errors).
fn load(
    addr: SocketAddr,
    path: &'static str,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(Vec<StatusCode>, Vec<String>)> {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let stop = stop.clone();
            set.spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                let (mut statuses, mut errors) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::get(format!("http://{addr}{path}"))
                        .body(Empty::new())
                        .unwrap();
                    // no request may hang: each is bounded well above every configured timeout
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Err(_) => errors.push("hung".to_owned()),
                        Ok(Err(e)) => errors.push(e.to_string()),
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            if status == StatusCode::SERVICE_UNAVAILABLE
                                && !resp.headers().contains_key("retry-after")
                            {
                                errors.push("503 without Retry-After".into());
                            }
                            match resp.into_body().collect().await {
                                Ok(_) => statuses.push(status),
                                Err(e) => errors.push(format!("body: {e}")),
                            }
                        }
                    }
                }
                (statuses, errors)
            });
        }
        let (mut statuses, mut errors) = (Vec::new(), Vec::new());
        while let Some(r) = set.join_next().await {
            let (s, e) = r.unwrap();
            statuses.extend(s);
            errors.extend(e);
        }
        (statuses, errors)
    })
}

/// Polls `f` until it holds (bounded: a feature that never gets there fails the test).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..2000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_killed_under_load_opens_the_breaker_and_it_recovers_when_it_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let server = upstream_on(listener, |_| async { Response::new(full("ok")) });
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        timeout = "2s"
        eject_after = 0
        [gateway.routes.all]
        prefix = "/"
        upstream = "app"
        breaker = "fast"
        [breaker.profiles.fast]
        window = "20 calls"
        minimum_calls = 10
        failure_rate = 0.5
        wait_in_open = "200ms"
        half_open_calls = 2
        [ratelimit]
        enabled = false
        "#
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(gw.addr, "/work", 8, stop.clone());
    eventually("200s under load", async || {
        get(gw.addr, "/work", &[]).await.status == StatusCode::OK
    })
    .await;

    server.abort();
    eventually("the breaker opens", async || {
        let r = get(gw.addr, "/work", &[]).await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.body.contains("circuit")
    })
    .await;

    let listener = loop {
        // the port is ours again once the aborted server's listener is gone
        match TcpListener::bind(up).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let _back = upstream_on(listener, |_| async { Response::new(full("ok")) });
    eventually("the breaker closes again", async || {
        breaker(&gw, "server:/{*path}").await["state"] == "closed"
            && get(gw.addr, "/work", &[]).await.status == StatusCode::OK
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (statuses, errors) = running.await.unwrap();
    assert!(
        errors.is_empty(),
        "no request hung, broke or was refused without Retry-After: {errors:?}"
    );
    for want in [
        StatusCode::OK,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        assert!(statuses.contains(&want), "no {want} under load");
    }
    let unexpected: Vec<_> = statuses
        .iter()
        .filter(|s| {
            ![
                StatusCode::OK,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ]
            .contains(s)
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_falls_back_with_no_5xx_and_health_warns() {
    let redis = garrison_workspace::require_tool("redis-server", "redis-server");
    let port = garrison_workspace::free_port();
    let mut server = garrison_workspace::KillOnDrop::spawn(
        std::process::Command::new(redis)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null()),
    );
    eventually("redis answers", async || {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let (up, _u) = upstream(|_| async { Response::new(full("ok")) }).await;
    let gw = gateway(&format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.all]
        prefix = "/"
        upstream = "app"
        [ratelimit]
        default_policy = "roomy"
        [ratelimit.policies.roomy]
        limit = 1000000
        period = "1s"
        [ratelimit.redis]
        url = "redis://127.0.0.1:{port}"
        timeout = "50ms"
        retry_interval = "100ms"
        [health]
        details = "always"
        "#
    ))
    .await;
    let auth = bearer();
    let store = async || {
        json(&get(gw.admin, "/admin/ratelimit", &[("authorization", &auth)]).await)["store"].clone()
    };
    eventually("decisions come from redis", async || {
        assert_eq!(get(gw.addr, "/x", &[]).await.status, StatusCode::OK);
        store().await["calls_ok"].as_u64().unwrap_or(0) > 0
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(gw.addr, "/x", 8, stop.clone());
    eventually("load runs", async || {
        get(gw.addr, "/x", &[]).await.status == StatusCode::OK
    })
    .await;
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    eventually("the limiter falls back", async || {
        store().await["mode"] == "fallback"
    })
    .await;
    eventually("the deep health route warns", async || {
        let r = get(gw.admin, "/health", &[]).await;
        r.status == StatusCode::OK && json(&r)["status"] == "warn"
    })
    .await;
    // requests go on while Redis is gone
    let before = get(gw.admin, "/metrics", &[]).await.body;
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/x", &[]).await.status, StatusCode::OK);
    }
    assert!(
        before.contains("garrison_ratelimit"),
        "the limiter's families are scraped"
    );
    stop.store(true, Ordering::Relaxed);
    let (statuses, errors) = running.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!statuses.is_empty());
    let fivexx = statuses.iter().filter(|s| s.is_server_error()).count();
    assert_eq!(fivexx, 0, "Redis dying caused no 5xx");
    assert!(store().await["fallback_decisions"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_fails_no_request_and_an_invalid_file_changes_nothing() {
    let (up, _u) = upstream(|_| async { Response::new(full("ok")) }).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let config = |limit: u32| {
        with_token(&format!(
            r#"
            [gateway.upstreams.app]
            addresses = ["{up}"]
            [gateway.routes.all]
            prefix = "/"
            upstream = "app"
            [ratelimit.policies.general]
            limit = {limit}
            period = "1s"
            "#
        ))
    };
    std::fs::write(file.path(), config(100_000)).unwrap();
    let gw = start(Gateway::from_file(file.path()).await.unwrap()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(gw.addr, "/x", 8, stop.clone());
    let auth = bearer();
    let auth = [("authorization", auth.as_str())];
    for (i, limit) in [200_000u32, 300_000, 400_000].into_iter().enumerate() {
        std::fs::write(file.path(), config(limit)).unwrap();
        let r = send(gw.admin, Method::POST, "/admin/reload", &auth).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(json(&r)["generation"], i as u64 + 2);
        let now = get(gw.addr, "/x", &[]).await;
        assert_eq!(
            now.headers["x-ratelimit-limit"],
            limit.to_string(),
            "the new policy applies"
        );
    }
    std::fs::write(file.path(), "[gateway.routes.x]\nprefix = \"/x\"\nupstream = \"nowhere\"\n[ratelimit.policies.general]\nlimit = 0\nperiod = \"1s\"\n").unwrap();
    let r = send(gw.admin, Method::POST, "/admin/reload", &auth).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&r);
    let paths: Vec<&str> = body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"gateway.routes.x.upstream")
            && paths.contains(&"ratelimit.policies.general.limit"),
        "{paths:?}"
    );
    assert_eq!(
        get(gw.addr, "/x", &[]).await.headers["x-ratelimit-limit"],
        "400000",
        "the old one serves"
    );
    assert_eq!(gw.gateway.current().number(), 4);

    stop.store(true, Ordering::Relaxed);
    let (statuses, errors) = running.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        statuses.len() > 20,
        "{} requests under load",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every request under reload succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_shutdown_under_load_completes_every_accepted_request() {
    let started = Arc::new(AtomicU64::new(0));
    let s = started.clone();
    let (up, _u) = upstream(move |_| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            // work in progress when the shutdown starts
            tokio::time::sleep(Duration::from_millis(30)).await;
            Response::new(full("done"))
        }
    })
    .await;
    let gw = gateway(&format!(
        r#"
        [gateway]
        shutdown_grace = "10s"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.all]
        prefix = "/"
        upstream = "app"
        [ratelimit]
        enabled = false
        "#
    ))
    .await;
    let completed = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let completed = completed.clone();
        let addr = gw.addr;
        clients.spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let mut truncated = 0;
            loop {
                let req = Request::get(format!("http://{addr}/"))
                    .body(Empty::new())
                    .unwrap();
                let Ok(resp) = client.request(req).await else {
                    // refused or closed before a response: the request was not accepted
                    break;
                };
                match resp.into_body().collect().await.map(|b| b.to_bytes()) {
                    Ok(b) if b == "done" => {
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => truncated += 1,
                }
            }
            truncated
        });
    }
    eventually("requests in flight", async || {
        started.load(Ordering::SeqCst) > 50
    })
    .await;
    gw.gateway.shutdown();
    // readiness fails at once
    tokio::time::timeout(Duration::from_secs(20), gw.served)
        .await
        .expect("serve returns after the drain")
        .unwrap();
    let mut truncated = 0;
    while let Some(t) = clients.join_next().await {
        truncated += t.unwrap();
    }
    assert_eq!(truncated, 0, "no response was cut short");
    assert_eq!(
        completed.load(Ordering::SeqCst),
        started.load(Ordering::SeqCst),
        "every request that reached the upstream got its whole response"
    );
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_and_oversized_heads_are_cut_off_without_affecting_others() {
    let (up, _u) = upstream(|_| async { Response::new(full("ok")) }).await;
    let gw = gateway(&format!(
        r#"
        [gateway]
        header_read_timeout = "300ms"
        max_header_bytes = 8192
        max_headers = 20
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.all]
        prefix = "/"
        upstream = "app"
        "#
    ))
    .await;
    // slowloris: a head that never ends, one header line at a time
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    // a client that connects and says nothing
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let dripping = tokio::spawn(async move {
        let mut cut = 0;
        for mut s in slow {
            let mut closed = false;
            for _ in 0..100 {
                if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
                    closed = true;
                    break;
                }
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed = true;
                        break;
                    }
                    Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 408") => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            cut += usize::from(closed);
        }
        cut
    });
    // others are served meanwhile
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(dripping.await.unwrap(), 20, "every slow client was cut off");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("a silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // a head larger than max_header_bytes, and one with too many fields
    let big = "a".repeat(10_000);
    let r = get(gw.addr, "/", &[("x-big", &big)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = get(gw.addr, "/", &many).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(get(gw.addr, "/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_defaults_show_200_429_metrics_and_health() {
    let gw = start(Gateway::new(GatewayConfig::default()).await.unwrap()).await;
    assert_eq!(get(gw.addr, "/items/7", &[]).await.status, StatusCode::OK);
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(send(gw.addr, Method::POST, "/auth/login", &[]).await.status);
        }
        v
    };
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let metrics = get(gw.admin, "/metrics", &[]).await.body;
    assert!(
        metrics.contains(r#"http_route="/auth/{*path}""#)
            || metrics.contains(r#"http_route="/auth""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("db_client_connection"),
        "the SQLite check's pool is measured"
    );
    let health = get(gw.admin, "/health/ready", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http2_connections_are_closed_and_give_their_places_back() {
    let (up, _u) = upstream(echo).await;
    let gw = one_route_gateway(
        up,
        "max_connections = 3\nheader_read_timeout = \"300ms\"\nidle_timeout = \"600ms\"",
        "",
    )
    .await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // one byte of the preface, the whole preface, and the preface with its SETTINGS frame
    let mut idle = Vec::new();
    for sent in [
        &PREFACE[..1],
        PREFACE,
        &[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat()[..],
    ] {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(sent).await.unwrap();
        idle.push(c);
    }
    // every place is taken; a normal client is served once the idle ones are closed
    let served = tokio::spawn({
        let addr = gw.addr;
        async move { get(addr, "/hello", &[]).await.status }
    });
    for (i, mut c) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    // the server's SETTINGS and GOAWAY, then the end
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "idle connection {i} is still open");
    }
    assert_eq!(served.await.unwrap(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_with_a_new_admin_token_refuses_the_old_one() {
    let (up, _u) = upstream(echo).await;
    let routes = format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n[gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    );
    let gw = gateway(&routes).await;
    let old = bearer();
    let list = |auth: String| async move {
        get(gw.admin, "/admin/breakers", &[("authorization", &auth)])
            .await
            .status
    };
    assert_eq!(list(old.clone()).await, StatusCode::OK);
    let config = GatewayConfig::from_toml(&format!(
        "[gateway]\nadmin_token = \"rotated-2026\"\n{routes}"
    ))
    .unwrap();
    gw.gateway.reload_with(config).await.unwrap();
    assert_eq!(list(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(list("Bearer rotated-2026".to_owned()).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_trace_input_stops_at_the_gateway() {
    let (up, _u) = upstream(echo).await;
    let gw = gateway(&format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n[gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    ))
    .await;
    // an id with a space, and baggage that is not a list of key=value
    let (status, body) = raw_request(
        gw.addr,
        "GET /x HTTP/1.1\r\nhost: x\r\nx-request-id: bad id\r\nbaggage: ===;;\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         connection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &seen["headers"];
    let sent = h["x-request-id"].as_str().unwrap();
    assert_eq!(
        sent.len(),
        32,
        "the upstream got the client's invalid id: {h}"
    );
    assert!(h.get("baggage").is_none(), "{h}");
    // the caller is no trusted proxy: its trace is joined, its sampled flag does not decide
    // (the gateway samples 10% by default, so most requests go on unsampled)
    let tp = h["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    let mut forced = 0;
    for _ in 0..40 {
        let seen = json(
            &get(
                gw.addr,
                "/x",
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
            )
            .await,
        );
        if seen["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-01")
        {
            forced += 1;
        }
    }
    assert!(
        forced < 20,
        "{forced} of 40 requests recorded at a client's word"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_health_are_on_the_admin_listener_unless_a_file_says_main() {
    let (up, _u) = upstream(echo).await;
    let routes = format!(
        "[gateway.upstreams.app]\naddresses = [\"{up}\"]\n[gateway.routes.rest]\nprefix = \"/\"\nupstream = \"app\"\n"
    );
    let gw = gateway(&routes).await;
    // the public listener forwards them to the upstream like any path; it answers nothing itself
    let public = json(&get(gw.addr, "/metrics", &[]).await);
    assert_eq!(public["path"], "/metrics", "{public}");
    assert!(get(gw.admin, "/metrics", &[])
        .await
        .body
        .contains("http_server_request_duration_seconds"));
    assert_eq!(
        get(gw.admin, "/health/ready", &[]).await.status,
        StatusCode::OK
    );
    let main = gateway(&format!("[gateway]\nobservability = \"main\"\n{routes}")).await;
    assert!(get(main.addr, "/metrics", &[])
        .await
        .body
        .contains("http_server_request_duration_seconds"));
}

/// xorshift64*: the fuzz cases from a seed, so that a failure can be replayed
/// (`GARRISON_FUZZ_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One hostile connection's bytes: a request head and body mangled, an HTTP/2 preface with
/// random frames, or noise.
fn fuzz_case(rng: &mut Rng, id: usize) -> Vec<u8> {
    match rng.below(4) {
        0 | 1 => {
            let body = ["hello", "", "5\r\nhello\r\n0\r\n\r\n", "ZZ\r\nboom\r\n"][rng.below(4)];
            let framing = [
                format!("content-length: {}\r\n", body.len()),
                "transfer-encoding: chunked\r\n".to_owned(),
                "content-length: 99999999999999999999\r\n".to_owned(),
                format!("content-length: {}\r\ncontent-length: 1\r\n", body.len()),
                "transfer-encoding: chunked\r\ncontent-length: 3\r\n".to_owned(),
                String::new(),
            ][rng.below(6)]
            .clone();
            let mut b = format!(
                "POST /f/{id}/%2e%2e/x HTTP/1.1\r\nhost: x\r\nx-fuzz-id: {id}\r\n{framing}\r\n{body}"
            )
            .into_bytes();
            // none to a few bytes changed: some cases stay requests and go through
            for _ in 0..rng.below(4) {
                let at = rng.below(b.len());
                let special = [b'\r', b'\n', 0, b':', b' ', b'%', 0xff, b'\t', b'/', b'.'];
                match rng.below(3) {
                    0 => b[at] = special[rng.below(special.len())],
                    1 => b.insert(at, special[rng.below(special.len())]),
                    _ => b[at] = (rng.next() & 0xff) as u8,
                }
            }
            if rng.below(4) == 0 {
                b.truncate(rng.below(b.len()));
            }
            b
        }
        2 => {
            let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            for _ in 0..1 + rng.below(6) {
                let len = rng.below(48);
                let kind = rng.below(11) as u8;
                let flags = (rng.next() & 0xff) as u8;
                let stream = (rng.next() as u32 & 0x7fff_ffff) % 8;
                b.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
                b.extend_from_slice(&stream.to_be_bytes());
                b.extend((0..len).map(|_| (rng.next() & 0xff) as u8));
            }
            b
        }
        _ => (0..rng.below(200))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect(),
    }
}

/// Panics outside the test files themselves (the gateway's code, hyper's, the stack's).
static FOREIGN_PANICS: AtomicU64 = AtomicU64::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bytes_never_take_the_gateway_down_nor_send_a_request_twice() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| !l.file().starts_with("tests/"))
        {
            FOREIGN_PANICS.fetch_add(1, Ordering::Relaxed);
        }
        previous(info);
    }));
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
    let (up, _u) = upstream({
        let seen = seen.clone();
        move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                if let Some(id) = req.headers().get("x-fuzz-id") {
                    let id = String::from_utf8_lossy(id.as_bytes()).into_owned();
                    *seen.lock().unwrap().entry(id).or_default() += 1;
                }
                let _ = req.into_body().collect().await;
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let gw = one_route_gateway(
        up,
        "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"\nmax_connections = 64",
        "timeout = \"1s\"",
    )
    .await;
    let seed = std::env::var("GARRISON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    let mut rng = Rng(seed);
    let cases = 400;
    for batch in 0..cases / 20 {
        let mut conns = Vec::new();
        for k in 0..20 {
            let bytes = fuzz_case(&mut rng, batch * 20 + k);
            let addr = gw.addr;
            conns.push(tokio::spawn(async move {
                let Ok(mut c) = TcpStream::connect(addr).await else {
                    return;
                };
                let _ = c.write_all(&bytes).await;
                let _ = c.shutdown().await;
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut sink)).await;
            }));
        }
        for c in conns {
            c.await.unwrap();
        }
        // every other client is still served
        let r = get(gw.addr, "/after-batch", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "seed {seed}, batch {batch}: {}",
            r.body
        );
    }
    let twice: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id}×{n}"))
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: sent upstream twice: {twice:?}"
    );
    // the cases are near enough to requests that some pass every check
    let reached = seen.lock().unwrap().len();
    eprintln!("fuzz seed {seed}: {cases} hostile connections, {reached} reached the upstream");
    assert!(
        reached >= 5,
        "seed {seed}: only {reached} cases reached the upstream"
    );
    assert_eq!(
        FOREIGN_PANICS.load(Ordering::Relaxed),
        0,
        "seed {seed}: the gateway panicked"
    );
    assert!(!gw.served.is_finished(), "the gateway stopped serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_stalled_requests_pins_no_more_upstream_connections_than_the_cap() {
    // an upstream that holds every request until it is told to answer
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(AtomicU64::new(0));
    let (up, _u) = upstream({
        let (release, arrived) = (release.clone(), arrived.clone());
        move |_req: Request<Incoming>| {
            let (release, arrived) = (release.clone(), arrived.clone());
            async move {
                arrived.fetch_add(1, Ordering::Relaxed);
                release.acquire().await.unwrap().forget();
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let gw = one_route_gateway(up, "", "max_connections_per_address = 2").await;
    let stalled: Vec<_> = (0..6)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move { get(addr, &format!("/slow/{i}"), &[]).await })
        })
        .collect();
    // two requests hold the two connections; the other four are refused, not queued forever
    let mut refused = 0;
    let mut waiting = Vec::new();
    for mut s in stalled {
        match tokio::time::timeout(Duration::from_secs(2), &mut s).await {
            Ok(r) => {
                let r = r.unwrap();
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
                assert_eq!(r.headers["retry-after"], "1");
                refused += 1;
            }
            Err(_) => waiting.push(s),
        }
    }
    assert_eq!(refused, 4);
    assert_eq!(arrived.load(Ordering::Relaxed), 2);
    release.add_permits(100);
    // the two held requests end, and their connections go back to the pool
    for s in waiting {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    // the address was not blamed, and serves again
    let r = get(
        gw.admin,
        "/admin/upstreams",
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(json(&r)["upstreams"]["app"]["addresses"][0]["ejections"], 0);
    // a connection goes back to the pool when the gateway has sent its response's end, which
    // can be just after the client has read it: the address serves again within a moment
    let mut again = get(gw.addr, "/again", &[]).await;
    for _ in 0..100 {
        if again.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = get(gw.addr, "/again", &[]).await;
    }
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_body_that_stops_coming_is_cut_off_after_body_idle_timeout() {
    // the head and one chunk, then nothing, the connection held open
    let up = raw_upstream(|mut s: TcpStream| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let gw = one_route_gateway(up, "", "body_idle_timeout = \"300ms\"").await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "the stalled response was never cut off");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    // cut off: no terminating chunk, so the client knows the body is incomplete
    assert!(!text.ends_with("0\r\n\r\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_cut_off_and_frees_the_upstream() {
    // 256 MiB announced and written as fast as the gateway takes it; `cut` once the
    // gateway closed the upstream connection under it
    let cut = Arc::new(AtomicBool::new(false));
    let up = raw_upstream({
        let cut = cut.clone();
        move |mut s: TcpStream| {
            let cut = cut.clone();
            async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let total = 256u64 << 20;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    if s.write_all(&chunk).await.is_err() {
                        cut.store(true, Ordering::Relaxed);
                        return;
                    }
                    sent += chunk.len() as u64;
                }
            }
        }
    })
    .await;
    let gw = one_route_gateway(up, "send_timeout = \"300ms\"", "").await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // the client reads nothing: the gateway's writes wait, then give up
    eventually(
        "the gateway closed the upstream connection under a client that stopped reading",
        async || cut.load(Ordering::Relaxed),
    )
    .await;
    // and the client's connection is closed: what it reads now ends well short of 256 MiB
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the client's connection is still open"),
        }
    }
    assert!(got < 256 << 20, "{got}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_window_http2_client_holds_no_more_than_the_cap_and_is_cut_off_by_the_send_timeout()
{
    // each request gets a 1 MiB body that the gateway can pass on only as the client reads;
    // `open` counts the upstream connections open now, `most` the most at once
    let open = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let up = raw_upstream({
        let (open, most) = (open.clone(), most.clone());
        move |mut s: TcpStream| {
            let (open, most) = (open.clone(), most.clone());
            async move {
                most.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let total = 1usize << 20;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                while read_head(&mut s).await.is_some() {
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(&vec![b'x'; total]).await.is_err()
                    {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    // the idle timeout out of the way: only the send timeout can close the connection
    let gw = one_route_gateway(
        up,
        "workers = 1\nsend_timeout = \"500ms\"\nidle_timeout = \"1h\"",
        "max_connections_per_address = 2",
    )
    .await;
    // HTTP/2 with every stream's flow-control window at zero: heads come, bodies cannot
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut pending = Vec::new();
    for i in 0..6 {
        client = client.ready().await.unwrap();
        let req = Request::get(format!("http://{}/file/{i}", gw.addr))
            .body(())
            .unwrap();
        pending.push(client.send_request(req, true).unwrap().0);
    }
    let mut statuses = Vec::new();
    let mut held = Vec::new(); // bodies kept, never read
    for p in pending {
        let resp = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("every stream gets its head")
            .unwrap();
        statuses.push(resp.status().as_u16());
        held.push(resp.into_body());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "no more than the cap at once"
    );
    // the responses wait for a client that will never take them: the send timeout closes
    // its connection, and the upstream connections behind it go with it
    let closed = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(closed.is_ok(), "the zero-window client is still connected");
    eventually("the upstream connections are freed", async || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 2);
    drop(held);
    let r = get(gw.addr, "/after", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1 << 20);
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_limits_are_announced_and_a_rapid_reset_flood_is_cut_off() {
    let (up, _u) = upstream(echo).await;
    let gw = one_route_gateway(up, "workers = 1", "").await;
    // the streams a client may open at once, as the gateway's SETTINGS say
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::get(format!("http://{}/x", gw.addr))
        .body(())
        .unwrap();
    let resp = client.send_request(req, true).unwrap().0.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 256);

    // CVE-2023-44487: streams opened and reset at once, faster than they can be accepted
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
                                            // GET http://x/ in HPACK: :method GET, :scheme http, :path /, :authority "x"
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    for i in 0..500u32 {
        let id = 2 * i + 1;
        flood.extend(h2_frame(0x1, 0x5, id, &block)); // HEADERS, END_STREAM | END_HEADERS
        flood.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM, CANCEL
    }
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let _ = c.write_all(&flood).await; // the gateway may close before it took it all
                                       // the frames the gateway sends until it closes the connection
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the flooding connection is still open"),
        }
    }
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 3] == 0x7 && at + 9 + len <= got.len() && len >= 8 {
            let code = &got[at + 13..at + 17];
            goaway = Some(u32::from_be_bytes(code.try_into().unwrap()));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    // and everyone else is still served
    assert_eq!(get(gw.addr, "/after", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_serves_64_connections_at_once_and_no_more() {
    let (up, _u) = upstream(echo).await;
    let gw = one_route_gateway(up, "", "").await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    let mut extra = TcpStream::connect(gw.admin).await.unwrap();
    extra
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // without the cap it would be answered at once
    let early = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a 65th connection was served beside 64 open ones"
    );
    // one of them goes: the waiting one takes its place
    drop(idle.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("served once a place was free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_from_the_admin_api_answers_503_survives_a_reload_and_ends() {
    let (up, _u) = upstream(echo).await;
    let toml = format!(
        r#"
        [gateway.upstreams.app]
        addresses = ["{up}"]
        [gateway.routes.orders]
        path = "/orders/{{id}}"
        upstream = "app"
        "#
    );
    let gw = gateway(&toml).await;
    let auth = bearer();
    let auth = [("authorization", auth.as_str())];
    assert_eq!(get(gw.addr, "/orders/1", &[]).await.status, StatusCode::OK);
    // the token is needed, as for the rest of the admin API
    let r = send(gw.admin, Method::POST, "/admin/maintenance?message=x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(gw.addr, "/orders/1", &[]).await.status, StatusCode::OK);

    let r = send(
        gw.admin,
        Method::POST,
        "/admin/maintenance?message=Upgrading%20the%20shop&retry_after=120",
        &auth,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(json(&r)["on"], true);
    let refused = get(gw.addr, "/orders/1", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "120");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&refused.body).unwrap()["message"],
        "Upgrading the shop"
    );
    // probes still answer on the admin listener
    assert_eq!(
        get(gw.admin, "/health/ready", &[]).await.status,
        StatusCode::OK
    );
    // a reload builds a new stack: maintenance stays on
    let config = GatewayConfig::from_toml(&with_token(&toml)).unwrap();
    gw.gateway.reload_with(config).await.unwrap();
    assert_eq!(
        get(gw.addr, "/orders/1", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let state = json(&get(gw.admin, "/admin/maintenance", &auth).await);
    assert_eq!(state["message"], "Upgrading the shop", "{state}");

    let r = send(gw.admin, Method::DELETE, "/admin/maintenance", &auth).await;
    assert_eq!(json(&r)["on"], false);
    assert_eq!(get(gw.addr, "/orders/1", &[]).await.status, StatusCode::OK);
    // no admission configured: nothing to drain
    let r = send(gw.admin, Method::POST, "/admin/admission/drain", &auth).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}
