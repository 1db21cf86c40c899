//! The reverse proxy: a route table to upstreams, request and response rewriting, and
//! upstream failures mapped to `502` / `504` with a JSON body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use garrison::garrison_core::{peer_addr, push_json_string, IpText, LayerBody};
use garrison::garrison_trace::PropagateLayer;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{Layer, Service, ServiceExt};

use crate::config::{GatewayConfig, HostMode, UpstreamProtocol};
use crate::metrics::TunnelStats;
use crate::pool::{Http1Pool, PooledBody, SendFuture};
use crate::upstream::Upstream;

/// What the gateway sends upstream: the client's body, streamed and held to its route's
/// `max_body_bytes`, or nothing (a retry of a request without one).
pub type UpstreamBody = Either<Limited<ClientBody>, Empty<Bytes>>;

/// The client's request body on its way upstream, watched so that a failure the client
/// caused (a malformed or truncated body, one that stops coming) is blamed on the client and
/// not on the upstream: answered `400`/`408`, counted against neither the breaker nor the
/// address.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    watch: Option<Arc<BodyWatch>>,
}

/// What [`ClientBody`] saw.
#[derive(Debug, Default)]
struct BodyWatch(std::sync::atomic::AtomicU8);

/// The body waits for the client (its last poll found nothing yet).
const WAITING: u8 = 1;
/// The client's body failed: malformed, or cut short.
const BROKEN: u8 = 2;
/// The body ended.
const ENDED: u8 = 4;

impl BodyWatch {
    fn get(&self) -> u8 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ClientBody {
    /// `inner`, watched unless it is empty; the watch is shared with the caller.
    fn new(inner: Incoming) -> (Self, Option<Arc<BodyWatch>>) {
        let watch = (!inner.is_end_stream()).then(Arc::default);
        (
            Self {
                inner,
                watch: watch.clone(),
            },
            watch,
        )
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(w) = &self.watch {
            match &polled {
                Poll::Pending => w.set(WAITING),
                Poll::Ready(Some(Ok(_))) => w.set(0),
                Poll::Ready(Some(Err(_))) => w.set(BROKEN),
                Poll::Ready(None) => w.set(ENDED),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer when the client, not the upstream, made the request fail: a body that broke
/// (`400`) or that stopped coming while the upstream waited for it (`408`). `None`: the
/// upstream is to blame.
fn client_blame(watch: Option<&BodyWatch>, failure: &Failure) -> Option<Response<ProxyBody>> {
    let state = watch?.get();
    if state & BROKEN != 0 {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "the request body is malformed or incomplete",
            None,
        ));
    }
    if state & WAITING != 0 && matches!(failure, Failure::Timeout | Failure::Broken(_)) {
        return Some(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
            None,
        ));
    }
    None
}

/// The proxy's response body: the upstream's, streamed, or the gateway's own error.
pub type ProxyBody = LayerBody<PooledBody>;

type HttpClient = Client<HttpConnector, UpstreamBody>;

/// The innermost service of the gateway: finds the route, picks an address, forwards.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: matchit::Router<usize>,
    routes: Vec<Route>,
    /// Peers whose forwarding headers are kept and appended to (`[ratelimit]
    /// trusted_proxies`); everyone else's are replaced by what the gateway saw.
    trusted: garrison::garrison_core::TrustedProxies,
    propagate: PropagateLayer,
    tunnels: Arc<TunnelStats>,
}

#[derive(Debug)]
struct Route {
    upstream: Arc<Upstream>,
    transport: Arc<Transport>,
    strip: Option<String>,
    /// The protocols a client may switch to (lower case; empty: none).
    upgrades: Box<[String]>,
    /// The largest request body forwarded (`usize::MAX`: no limit).
    max_body: usize,
    /// The wait for a response head: the route's, else its upstream's.
    timeout: std::time::Duration,
    /// `X-Forwarded-Prefix` for the upstream: the prefix this route strips, if it does.
    forwarded_prefix: Option<HeaderValue>,
}

/// How requests reach an upstream. Either way each worker thread has connections of its
/// own, driven on that worker: no wake-ups across threads.
#[derive(Debug)]
enum Transport {
    /// HTTP/1.1: the gateway's own pool, one idle list per worker and address.
    Http1(Http1Pool),
    /// h2c: one client per worker (one shared HTTP/2 connection per address).
    H2c(Box<[HttpClient]>),
}

thread_local! {
    /// The index of the worker thread running this code (0 elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `i` (its requests use the `i`th connection pools).
pub(crate) fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

impl Proxy {
    /// The proxy of `config`, with `upstreams` made from its `[gateway.upstreams]`.
    pub(crate) fn new(
        config: &GatewayConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        workers: usize,
        tunnels: Arc<TunnelStats>,
    ) -> Self {
        let mut transports = BTreeMap::new();
        for (name, u) in &config.gateway.upstreams {
            let t = match u.protocol {
                UpstreamProtocol::Http1 => Transport::Http1(Http1Pool::new(
                    workers,
                    u.addresses.len(),
                    u.connect_timeout,
                    u.pool_idle_timeout,
                    u.max_connections_per_address,
                )),
                UpstreamProtocol::H2c => {
                    Transport::H2c((0..workers.max(1)).map(|_| client(u)).collect())
                }
            };
            transports.insert(name.clone(), Arc::new(t));
        }
        let mut router = matchit::Router::new();
        let mut routes = Vec::new();
        for r in config.gateway.routes.values() {
            let i = routes.len();
            let strip = r
                .strip_prefix
                .then(|| r.prefix.clone().unwrap_or_default())
                .map(|p| p.trim_end_matches('/').to_owned());
            routes.push(Route {
                upstream: upstreams[&r.upstream].clone(),
                transport: transports[&r.upstream].clone(),
                forwarded_prefix: strip
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .and_then(|p| HeaderValue::from_str(p).ok()),
                strip,
                timeout: r
                    .timeout
                    .unwrap_or(config.gateway.upstreams[&r.upstream].timeout),
                upgrades: r.upgrades.clone().into_boxed_slice(),
                max_body: match r.max_body_bytes.unwrap_or(config.gateway.max_body_bytes) {
                    0 => usize::MAX,
                    n => usize::try_from(n).unwrap_or(usize::MAX),
                },
            });
            for p in r.patterns() {
                // validated: the patterns do not collide
                let _ = router.insert(p, i);
            }
        }
        // validated with the rest of the stack's configuration
        let trusted = garrison::garrison_core::TrustedProxies::new(
            &config.garrison.ratelimit.trusted_proxies,
        )
        .unwrap_or_else(|_| garrison::garrison_core::TrustedProxies::none());
        Self {
            inner: Arc::new(Inner {
                router,
                routes,
                trusted,
                propagate: PropagateLayer::new(),
                tunnels,
            }),
        }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.forward(req).await) })
    }
}

/// Why an upstream gave no response.
pub(crate) enum Failure {
    /// Refused or unreachable: nothing was sent, a retry elsewhere is safe.
    Connect(String),
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// No response head within the upstream's timeout.
    Timeout,
    /// The connection broke after the request went out.
    Broken(String),
    /// The request's body grew past its route's limit on its way.
    TooLarge,
    /// The address has `max_connections_per_address` open, every one busy: nothing was sent.
    Saturated,
}

/// A [`Failure`], with the request given back when none of it went out.
pub(crate) struct Lost {
    pub(crate) failure: Failure,
    /// The request, body untouched, when nothing of it was sent: another address may take
    /// it without the risk of doing its work twice.
    ///
    /// Boxed: an error is rare, and a small one keeps every request's future small.
    pub(crate) unsent: Option<Box<Request<UpstreamBody>>>,
}

impl From<Failure> for Lost {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            unsent: None,
        }
    }
}

impl Inner {
    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if let Some(refused) = req.extensions().get::<crate::server::Refused>() {
            return error(StatusCode::BAD_REQUEST, refused.0, None);
        }
        let Ok(found) = self.router.at(req.uri().path()) else {
            return error(StatusCode::NOT_FOUND, "no route for this path", None);
        };
        let route = &self.routes[*found.value];
        let up = &route.upstream;
        let peer = peer_addr(&req);
        let (mut parts, body) = req.into_parts();
        // over HTTP/2, the response body's waits for the client are watched (see `stall`)
        let stalls = match parts.version {
            Version::HTTP_2 => parts.extensions.remove::<Arc<crate::stall::Stalls>>(),
            _ => None,
        };
        let Some(path) = upstream_path(&parts.uri, route.strip.as_deref()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the path cannot be forwarded",
                None,
            );
        };
        if route.max_body != usize::MAX && declared_over(&parts.headers, route.max_body) {
            return too_large(route.max_body);
        }
        let (body, watch) = ClientBody::new(body);
        let body = Limited::new(body, route.max_body);
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // most requests have no hop-by-hop header: one look at each name, and no more
        let mut switch = None;
        if parts.headers.keys().any(is_hop_by_hop) {
            if !route.upgrades.is_empty() {
                switch = crate::tunnel::requested(&mut parts, &route.upgrades);
            }
            strip_hop_by_hop(&mut parts.headers);
        }
        // what a client says about where it came from is believed only from a trusted proxy
        if peer.is_some_and(|p| self.trusted.is_trusted(p.ip())) {
            join_lines(&mut parts.headers, &X_FORWARDED_FOR);
            join_lines(&mut parts.headers, &header::FORWARDED);
        } else {
            strip_forwarding(&mut parts.headers);
        }
        add_forwarded(&mut parts.headers, peer, host.as_ref());
        if let Some(prefix) = &route.forwarded_prefix {
            if let http::header::Entry::Vacant(e) = parts.headers.entry(&X_FORWARDED_PREFIX) {
                e.insert(prefix.clone());
            }
        }
        parts.version = match up.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        // HTTP/2 clients name the host in the URI only: keep it as the Host header
        if let (HostMode::Preserve, Some(h)) = (up.host, &host) {
            if !parts.headers.contains_key(header::HOST) {
                parts.headers.insert(header::HOST, h.clone());
            }
        }
        if let Some(switch) = switch {
            parts.version = Version::HTTP_11;
            // boxed: a rare path, and its state would make every request's future larger
            return Box::pin(self.tunnel(route, parts, body, &path, switch)).await;
        }
        let watch = watch.as_deref();
        // A request refused by one address goes to another. The pool of an HTTP/1.1
        // upstream gives back a request it did not send, body and all; hyper-util's client
        // (h2c) keeps it, so a request without a body is copied for it first.
        let h2c_copy = (body.is_end_stream()
            && up.has_alternatives()
            && matches!(*route.transport, Transport::H2c(_)))
        .then(|| parts.clone());

        let (at, authority) = up.pick(None);
        let first = request(parts, authority, &path, up.host, Either::Left(body));
        let Lost { failure, unsent } = match self.send(route, at, authority, first).await {
            Ok(resp) => {
                up.succeeded(at);
                return response(resp, up, stalls.as_ref());
            }
            Err(lost) => {
                if let Some(answer) = client_blame(watch, &lost.failure) {
                    return answer;
                }
                charge(up, at, &lost.failure);
                lost
            }
        };
        let again = match failure {
            Failure::Connect(_) | Failure::ConnectTimeout | Failure::Saturated
                if up.has_alternatives() =>
            {
                unsent
                    .map(|req| req.into_parts())
                    .or_else(|| h2c_copy.map(|parts| (parts, Either::Right(Empty::new()))))
            }
            _ => None,
        };
        let failure = match again {
            Some((parts, body)) => {
                let (again, authority) = up.pick(Some(at));
                let req = request(parts, authority, &path, up.host, body);
                match self.send(route, again, authority, req).await {
                    Ok(resp) => {
                        up.succeeded(again);
                        return response(resp, up, stalls.as_ref());
                    }
                    Err(lost) => {
                        if let Some(answer) = client_blame(watch, &lost.failure) {
                            return answer;
                        }
                        charge(up, again, &lost.failure);
                        lost.failure
                    }
                }
            }
            None => failure,
        };
        failed(route, failure)
    }

    /// [`forward`](Self::forward) for a request that asks to switch protocols: sent over a
    /// new connection of its own (to the next address when one refuses it or does not
    /// connect in time), and, when the upstream switches, the two connections joined.
    async fn tunnel(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Limited<ClientBody>,
        path: &PathAndQuery,
        switch: crate::tunnel::Requested,
    ) -> Response<ProxyBody> {
        let up = &route.upstream;
        crate::tunnel::mark_upgrade(&mut parts.headers, switch.upgrade);
        let (at, authority) = up.pick(None);
        let first = request(parts, authority, path, up.host, Either::Left(body));
        let answer = match self.open(route, authority, first).await {
            Ok(resp) => {
                up.succeeded(at);
                Ok(resp)
            }
            Err(Lost {
                failure: Failure::Connect(_) | Failure::ConnectTimeout,
                unsent: Some(req),
            }) if up.has_alternatives() => {
                up.failed(at);
                let (again, authority) = up.pick(Some(at));
                let (parts, body) = req.into_parts();
                let req = request(parts, authority, path, up.host, body);
                match self.open(route, authority, req).await {
                    Ok(resp) => {
                        up.succeeded(again);
                        Ok(resp)
                    }
                    Err(lost) => {
                        charge(up, again, &lost.failure);
                        Err(lost.failure)
                    }
                }
            }
            Err(lost) => {
                charge(up, at, &lost.failure);
                Err(lost.failure)
            }
        };
        let mut resp = match answer {
            Ok(resp) => resp,
            Err(failure) => return failed(route, failure),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // the upstream would not switch: its answer goes back as any other
            return response(PooledBody::unpooled(resp), up, None);
        }
        let Some(theirs) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream upgrade failed",
                Some(up.name()),
            );
        };
        let upgrade = resp.headers().get(header::UPGRADE).cloned();
        tokio::spawn(crate::tunnel::splice(
            switch.client,
            theirs,
            up.tunnel_idle_timeout,
            switch.slot,
            self.tunnels.clone(),
        ));
        let mut resp = response(PooledBody::unpooled(resp), up, None);
        if let Some(u) = upgrade {
            crate::tunnel::mark_upgrade(resp.headers_mut(), u);
        }
        resp
    }

    /// Sends a request that asks to switch protocols to `authority`, within the upstream's
    /// timeout for the answer's head.
    async fn open(
        &self,
        route: &Route,
        authority: &Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Lost> {
        let up = &route.upstream;
        let client = self.propagate.layer(crate::tunnel::TunnelClient {
            authority,
            connect_timeout: up.connect_timeout,
        });
        match crate::timer::timeout(route.timeout, client.oneshot(req)).await {
            Err(_) => Err(Failure::Timeout.into()),
            Ok(r) => r,
        }
    }

    async fn send(
        &self,
        route: &Route,
        at: usize,
        authority: &Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, Lost> {
        let timeout = route.timeout;
        let clients = match &*route.transport {
            Transport::Http1(pool) => {
                let client = self.propagate.layer(Http1Client {
                    pool,
                    worker: worker(),
                    at,
                    authority,
                });
                // a coarse deadline (within 10 ms after it): see `timer`
                return match crate::timer::timeout(timeout, client.oneshot(req)).await {
                    Err(_) => Err(Failure::Timeout.into()),
                    Ok(r) => r,
                };
            }
            Transport::H2c(clients) => clients,
        };
        // the worker's client by reference: no clone of its pool handles per request
        let client = self.propagate.layer(&clients[worker() % clients.len()]);
        let failure = match crate::timer::timeout(timeout, client.oneshot(req)).await {
            Ok(Ok(resp)) => return Ok(PooledBody::unpooled(resp)),
            Err(_) => Failure::Timeout,
            Ok(Err(e)) if e.is_connect() => {
                if timed_out(&e) {
                    Failure::ConnectTimeout
                } else {
                    Failure::Connect(source_chain(&e))
                }
            }
            Ok(Err(e)) => broken(&e),
        };
        Err(failure.into())
    }
}

/// Counts `failure` against address `at` of `up`, unless the request is to blame (a body
/// over its limit).
fn charge(up: &Upstream, at: usize, failure: &Failure) {
    if !matches!(failure, Failure::TooLarge | Failure::Saturated) {
        up.failed(at);
    }
}

/// The gateway's answer when the upstream of `route` gave none.
fn failed(route: &Route, failure: Failure) -> Response<ProxyBody> {
    let up = &route.upstream;
    let name = Some(up.name());
    match failure {
        Failure::Connect(e) => {
            tracing::warn!(upstream = up.name(), error = %e, "upstream unreachable");
            error(StatusCode::BAD_GATEWAY, "upstream unreachable", name)
        }
        Failure::TooLarge => too_large(route.max_body),
        Failure::Broken(e) => {
            tracing::warn!(upstream = up.name(), error = %e, "upstream connection failed");
            error(StatusCode::BAD_GATEWAY, "upstream connection failed", name)
        }
        Failure::ConnectTimeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream connect timed out",
            name,
        ),
        Failure::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out", name),
        Failure::Saturated => {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connection limit reached",
                name,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// One request's way to an HTTP/1.1 address through the worker's pool, as a tower service
/// for [`PropagateLayer`] (which sees the absolute URI for its client span; the request
/// line carries the origin form).
struct Http1Client<'a> {
    pool: &'a Http1Pool,
    worker: usize,
    at: usize,
    authority: &'a Authority,
}

impl<'a> Service<Request<UpstreamBody>> for Http1Client<'a> {
    type Response = Response<PooledBody>;
    type Error = Lost;
    type Future = SendFuture<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Lost>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<UpstreamBody>) -> Self::Future {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        let Self {
            pool,
            worker,
            at,
            authority,
        } = *self;
        Box::pin(async move { pool.send(worker, at, authority, req).await })
    }
}

fn client(u: &crate::config::UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(u.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(u.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1024);
    if u.protocol == UpstreamProtocol::H2c {
        b.http2_only(true);
    }
    b.build(connector)
}

fn request(
    mut parts: http::request::Parts,
    authority: &Authority,
    path: &PathAndQuery,
    host: HostMode,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(path.clone());
    parts.uri = Uri::from_parts(uri).expect("scheme, authority and path are set");
    if host == HostMode::Upstream || !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    Request::from_parts(parts, body)
}

/// The path and query sent upstream, without the route's prefix when it strips it.
fn upstream_path(uri: &Uri, strip: Option<&str>) -> Option<PathAndQuery> {
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    match strip {
        // the request's own, shared: no parse and no copy
        None | Some("") => Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
        Some(prefix) => {
            let rest = pq.strip_prefix(prefix)?;
            if rest.is_empty() || rest.starts_with('?') {
                format!("/{rest}").parse().ok()
            } else if rest.starts_with('/') {
                rest.parse().ok()
            } else {
                None // `/apix` under prefix `/api`: not this route's
            }
        }
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The headers that say where a request came from: from an untrusted peer, dropped and then
/// written again from what the gateway saw.
fn is_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    match n.as_bytes().first() {
        Some(b'x') => n.starts_with("x-forwarded-") || n == "x-real-ip",
        Some(b'f') => n == "forwarded",
        _ => false,
    }
}

/// Drops the forwarding headers a client sent (one look at each name when there are none).
fn strip_forwarding(h: &mut HeaderMap) {
    if !h.keys().any(is_forwarding) {
        return;
    }
    for name in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PREFIX,
        &X_FORWARDED_PORT,
        &X_REAL_IP,
        &header::FORWARDED,
    ] {
        h.remove(name);
    }
}

/// Joins the lines of a list header into one (`a, b`), so that appending to it keeps them
/// all.
fn join_lines(h: &mut HeaderMap, name: &HeaderName) {
    let mut lines = h.get_all(name).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut b = BytesMut::from(first.as_bytes());
    for line in h.get_all(name).iter().skip(1) {
        b.put_slice(b", ");
        b.put_slice(line.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(b.freeze()) {
        h.insert(name, v);
    }
}

/// The headers that belong to one connection (RFC 9110 §7.6.1), whatever `Connection`
/// names besides.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TRANSFER_ENCODING
        || n == header::TE
        || n == header::TRAILER
        || n == header::UPGRADE
        || n == header::PROXY_AUTHENTICATE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), and those the `Connection`
/// header names: never forwarded.
fn remove_hop_by_hop(h: &mut HeaderMap) {
    // most messages have none: one look at each name instead of a removal of each kind
    if h.keys().any(is_hop_by_hop) {
        strip_hop_by_hop(h);
    }
}

/// The options that the `Connection` headers of `h` name (header names, `close`,
/// `upgrade`), trimmed.
pub(crate) fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// [`remove_hop_by_hop`] for a map known to hold one.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(h)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    for n in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        h.remove(n);
    }
    // `TE: trailers` is the one TE value that may cross (gRPC needs it)
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// A header value written in place: one buffer, handed to the value without a copy.
fn value_of(b: BytesMut) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(b.freeze()).ok()
}

/// Text written in place made a header value whole: one allocation, and the value's clones
/// (the pool's copy of a request it may send again) count references instead of allocating,
/// as a value copied out of a buffer would on its first clone.
fn owned_value(text: impl AsRef<[u8]> + Send + 'static) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).ok()
}

/// Text of at most `N` bytes, written in place: a whole `Forwarded` value, made a header
/// value whole ([`owned_value`]).
#[derive(Clone, Copy)]
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Text<N> {
    /// Appends `b`, cut at the capacity.
    fn push(&mut self, b: &[u8]) {
        let end = (self.len + b.len()).min(N);
        self.buf[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text as a header value, if it is a valid one.
    fn value(self) -> Option<HeaderValue> {
        owned_value(self)
    }
}

impl<const N: usize> AsRef<[u8]> for Text<N> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The longest `Forwarded` value written in place ([`Text`]); a longer one (a long host, or
/// the caller's own `Forwarded` before ours) is written into an allocated buffer.
const FORWARDED_IN_PLACE: usize = 160;

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (appended, RFC 7239).
fn add_forwarded(h: &mut HeaderMap, peer: Option<SocketAddr>, host: Option<&HeaderValue>) {
    use http::header::Entry;
    // each name is hashed once: looked up and set through its entry
    let ip = peer.map(|p| (p.is_ipv6(), IpText::new(p.ip())));
    if let Some((_, ip)) = &ip {
        match h.entry(&X_FORWARDED_FOR) {
            Entry::Occupied(mut e) => {
                let prev = e.get().as_bytes();
                let mut b = BytesMut::with_capacity(prev.len() + 2 + ip.len());
                b.put_slice(prev);
                b.put_slice(b", ");
                b.put_slice(ip.as_bytes());
                if let Some(v) = value_of(b) {
                    e.insert(v);
                }
            }
            Entry::Vacant(e) => {
                if let Some(v) = owned_value(*ip) {
                    e.insert(v);
                }
            }
        }
    }
    if let Entry::Vacant(e) = h.entry(&X_FORWARDED_PROTO) {
        e.insert(HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if let Entry::Vacant(e) = h.entry(&X_FORWARDED_HOST) {
            e.insert(host.clone());
        }
    }
    let host = host.map(HeaderValue::as_bytes);
    let forwarded = h.entry(header::FORWARDED);
    let prev = match &forwarded {
        Entry::Occupied(e) => Some(e.get().as_bytes()),
        Entry::Vacant(_) => None,
    };
    let len = prev.map_or(0, |p| p.len() + 2) + 64 + host.map_or(0, |h| h.len() + 8);
    let value = if len <= FORWARDED_IN_PLACE {
        let mut t = Text::<FORWARDED_IN_PLACE>::default();
        forwarded_value(&mut |b| t.push(b), prev, ip.as_ref(), host);
        t.value()
    } else {
        let mut b = BytesMut::with_capacity(len);
        forwarded_value(&mut |s| b.put_slice(s), prev, ip.as_ref(), host);
        value_of(b)
    };
    if let Some(v) = value {
        match forwarded {
            Entry::Occupied(mut e) => {
                e.insert(v);
            }
            Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
}

/// [`HOST_BYTE`]: the byte may stand in a `host=` token as written.
const TOKEN: u8 = 1;
/// [`HOST_BYTE`]: the byte may stand in a quoted string without an escape.
const QUOTABLE: u8 = 2;

/// What each byte of a host may be in `Forwarded`: [`TOKEN`] (letters, digits and `.-_~`),
/// [`QUOTABLE`] (printable ASCII but `"` and `\`), both, or neither.
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~') {
            t[b] |= TOKEN;
        }
        if c >= 0x20 && c < 0x7f && c != b'"' && c != b'\\' {
            t[b] |= QUOTABLE;
        }
        b += 1;
    }
    t
};

/// Writes the `Forwarded` value through `put`: `prev` (the caller's own, if any), then ours,
/// for the client `ip` (`true`: IPv6) and `host`.
fn forwarded_value(
    put: &mut impl FnMut(&[u8]),
    prev: Option<&[u8]>,
    ip: Option<&(bool, IpText)>,
    host: Option<&[u8]>,
) {
    if let Some(prev) = prev {
        put(prev);
        put(b", ");
    }
    match &ip {
        Some((false, ip)) => {
            put(b"for=");
            put(ip.as_bytes());
            put(b";");
        }
        Some((true, ip)) => {
            put(b"for=\"[");
            put(ip.as_bytes());
            put(b"]\";");
        }
        None => {}
    }
    if let Some(host) = host {
        // a token when it can be, else a quoted string (RFC 7239 §4): both told in one pass
        let class = host
            .iter()
            .fold(TOKEN | QUOTABLE, |c, &b| c & HOST_BYTE[b as usize]);
        if class & TOKEN != 0 {
            put(b"host=");
            put(host);
            put(b";");
        } else if class & QUOTABLE != 0 {
            put(b"host=\"");
            put(host);
            put(b"\";");
        }
    }
    put(b"proto=http");
}

fn response(
    resp: Response<PooledBody>,
    up: &Upstream,
    stalls: Option<&Arc<crate::stall::Stalls>>,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    body.idle_timeout(up.body_idle_timeout);
    if let Some(stalls) = stalls {
        body.watched(stalls);
    }
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, LayerBody::inner(body))
}

/// The gateway's own error: a small JSON body, never cached.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    upstream: Option<&str>,
) -> Response<ProxyBody> {
    let mut b = BytesMut::with_capacity(96);
    b.put_slice(b"{\"error\":");
    let mut s = String::new();
    push_json_string(&mut s, message);
    if let Some(u) = upstream {
        s.push_str(",\"upstream\":");
        push_json_string(&mut s, u);
    }
    b.put_slice(s.as_bytes());
    b.put_slice(format!(",\"status\":{}}}", status.as_u16()).as_bytes());
    let mut resp = Response::new(LayerBody::local(b.freeze()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether `h`'s `Content-Length` says more than `limit` bytes.
fn declared_over(h: &HeaderMap, limit: usize) -> bool {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// `413` for a request body over `limit` bytes.
fn too_large(limit: usize) -> Response<ProxyBody> {
    tracing::debug!(limit, "a request body over its route's limit");
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {limit} bytes"),
        None,
    )
}

/// The failure of a request whose connection broke after it went out: its own body's
/// limit, when that is what ended it.
pub(crate) fn broken(e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return Failure::TooLarge;
        }
        cur = err.source();
    }
    Failure::Broken(source_chain(e))
}

pub(crate) fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Whether `e` comes of a timeout: hyper-util's connector reports its connect timeout as an
/// I/O error of kind `TimedOut` (around tokio's `Elapsed`), somewhere down the source chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let io_timeout = err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if io_timeout || err.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper-util's `ConnectError` does.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_timeout_is_told_by_its_error_kind_not_by_its_words() {
        let elapsed = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, elapsed);
        assert!(timed_out(&Wrapping(timeout)));
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused, though these words say timed out",
        );
        assert!(!timed_out(&Wrapping(refused)));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers");
    }

    #[test]
    fn forwarded_headers_are_appended_to_what_came_in() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        let host = HeaderValue::from_static("shop.example:8080");
        add_forwarded(&mut h, Some("10.1.2.3:5555".parse().unwrap()), Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example:8080");
        assert_eq!(
            h[header::FORWARDED],
            "for=203.0.113.9, for=10.1.2.3;host=\"shop.example:8080\";proto=http"
        );
        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, Some("[2001:db8::1]:80".parse().unwrap()), None);
        assert_eq!(v6[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http");
        // a host as a token, as a quoted string, or left out when it would need escapes
        for (host, want) in [
            ("shop.example", "for=10.1.2.3;host=shop.example;proto=http"),
            ("a_b-c~d.e", "for=10.1.2.3;host=a_b-c~d.e;proto=http"),
            ("[::1]:80", "for=10.1.2.3;host=\"[::1]:80\";proto=http"),
            ("a b", "for=10.1.2.3;host=\"a b\";proto=http"),
            ("a\"b", "for=10.1.2.3;proto=http"),
            ("a\\b", "for=10.1.2.3;proto=http"),
        ] {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_str(host).unwrap();
            add_forwarded(&mut h, Some("10.1.2.3:1".parse().unwrap()), Some(&v));
            assert_eq!(h[header::FORWARDED], want, "host {host}");
        }
    }

    #[test]
    fn forwarded_values_are_whole_in_place_and_past_it() {
        // the longest address text, and hosts on both sides of what is written in place
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let peer = SocketAddr::new(ip.parse().unwrap(), 80);
        for prev in [None, Some("for=192.0.2.1;proto=https")] {
            for n in [0, 1, 50, 80, 87, 88, 89, 90, 120, 300] {
                let name = "h".repeat(n);
                let mut h = HeaderMap::new();
                if let Some(p) = prev {
                    h.insert(header::FORWARDED, HeaderValue::from_static(p));
                }
                let host = HeaderValue::from_str(&name).unwrap();
                add_forwarded(&mut h, Some(peer), (n > 0).then_some(&host));
                let ours = match n {
                    0 => format!("for=\"[{ip}]\";proto=http"),
                    _ => format!("for=\"[{ip}]\";host={name};proto=http"),
                };
                let want = match prev {
                    Some(p) => format!("{p}, {ours}"),
                    None => ours,
                };
                assert_eq!(h[header::FORWARDED], want.as_str(), "host of {n}, {prev:?}");
                assert_eq!(h["x-forwarded-for"], ip);
            }
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert(KEEP_ALIVE.clone(), HeaderValue::from_static("timeout=5"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn a_stripped_prefix_leaves_the_rest_of_the_path_and_the_query() {
        let uri: Uri = "/api/users/7?x=1".parse().unwrap();
        assert_eq!(upstream_path(&uri, Some("/api")).unwrap(), "/users/7?x=1");
        let bare: Uri = "/api?x=1".parse().unwrap();
        assert_eq!(upstream_path(&bare, Some("/api")).unwrap(), "/?x=1");
        assert_eq!(upstream_path(&uri, None).unwrap(), "/api/users/7?x=1");
        let other: Uri = "/apix".parse().unwrap();
        assert!(upstream_path(&other, Some("/api")).is_none());
    }

    #[test]
    fn errors_are_small_json_bodies_that_are_never_cached() {
        let r = error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream timed out",
            Some("a\"b"),
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
