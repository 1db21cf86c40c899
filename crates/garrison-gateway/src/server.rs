//! [`Gateway`]: the listeners, the connection limits, reloads and graceful shutdown.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use garrison::config::{ConfigError, ConfigIssue};
use garrison::garrison_core::{PeerAddr, SharedClock};
use garrison::garrison_health::CheckOptions;
use garrison::{Garrison, GarrisonService};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OnceCell, Semaphore};
use tower::{Layer, Service, ServiceExt};

use crate::config::{GatewayConfig, GatewaySection, DEMO_ADDRESS};
use crate::metrics::{GatewayCollector, TunnelStats, UpstreamsCheck};
use crate::proxy::Proxy;
use crate::tunnel::ConnectionSlot;
use crate::upstream::Upstream;

/// The proxy behind the whole garrison stack.
pub type GatewayService = GarrisonService<Proxy>;

/// One configuration in force: made whole before it replaces the previous one, so that a
/// reload never serves a half-built stack.
#[derive(Debug)]
pub struct Generation {
    number: u64,
    config: GatewayConfig,
    garrison: Garrison,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    service: GatewayService,
}

impl Generation {
    /// 1 for the configuration the gateway started with, one more at each reload.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The garrison stack: its registries (metrics, health, breakers, rate limiter).
    pub fn garrison(&self) -> &Garrison {
        &self.garrison
    }

    /// The upstreams by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.upstreams
    }
}

/// Where the configuration comes from, for reloads.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Given,
}

/// A running gateway: the configuration in force, reloads, and shutdown. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use garrison_gateway::{Gateway, GatewayConfig};
///
/// let gateway = Gateway::new(GatewayConfig::default()).await?;
/// let (main, admin) = gateway.bind().await?;
/// let stop = gateway.clone();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// gateway.serve(main, admin).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    source: Source,
    current: RwLock<Arc<Generation>>,
    factory: Factory,
    /// The admin API's bearer token: replaced when a reload brings another one.
    admin_token: RwLock<Arc<str>>,
    shutdown: watch::Sender<bool>,
    reloads: tokio::sync::Mutex<()>,
}

/// Makes generations: what stays from one to the next.
#[derive(Debug)]
struct Factory {
    /// Generations made so far (the number of the newest).
    number: AtomicU64,
    /// Worker threads (each generation makes one upstream pool per worker).
    workers: usize,
    demo: OnceCell<SocketAddr>,
    clock: SharedClock,
    /// Tunnels outlive generations: counted once for the gateway.
    tunnels: Arc<TunnelStats>,
}

fn issue(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(vec![ConfigIssue {
        path: path.into(),
        message: message.into(),
    }])
}

impl Gateway {
    /// A gateway of `config` (it cannot reload: there is no file to read again). Starts the
    /// demo upstream when an upstream names [`DEMO_ADDRESS`], and the background tasks of
    /// the stack, so it must run inside a tokio runtime.
    pub async fn new(config: GatewayConfig) -> Result<Self, ConfigError> {
        Self::start(config, Source::Given, SharedClock::system()).await
    }

    /// A gateway of the configuration file `path`, which [`reload`](Self::reload) (and
    /// SIGHUP, in the binary) reads again.
    pub async fn from_file(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let config = GatewayConfig::from_file(&path)?;
        Self::with_file(config, path).await
    }

    /// A gateway of `config`, already read from `path`, which [`reload`](Self::reload) reads
    /// again (the binary reads its file once at start, so that a pipe such as
    /// `--config <(…)` or `/dev/stdin` works).
    pub async fn with_file(
        config: GatewayConfig,
        path: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        Self::start(config, Source::File(path.into()), SharedClock::system()).await
    }

    /// A gateway whose layers and upstreams read time from `clock` (tests).
    pub async fn with_clock(
        config: GatewayConfig,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        Self::start(config, Source::Given, clock).await
    }

    async fn start(
        config: GatewayConfig,
        source: Source,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        let admin_token = if !config.gateway.admin_token.is_empty() {
            config.gateway.admin_token.clone()
        } else if let Some(t) = std::env::var("GARRISON_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            t
        } else {
            random_token()
        };
        let (shutdown, _) = watch::channel(false);
        let workers = match config.gateway.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let factory = Factory {
            number: AtomicU64::new(0),
            workers,
            demo: OnceCell::new(),
            clock,
            tunnels: Arc::default(),
        };
        let first = factory.build(config).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                source,
                current: RwLock::new(Arc::new(first)),
                factory,
                admin_token: RwLock::new(admin_token.into()),
                shutdown,
                reloads: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.shared.current.read().clone()
    }

    /// The bearer token of the admin API now (a reload with another `admin_token` replaces
    /// it: the old one is refused from the next request).
    pub fn admin_token(&self) -> Arc<str> {
        self.shared.admin_token.read().clone()
    }

    /// Reads the configuration file again and, when it is valid, serves it from the next
    /// request on (connections stay open; requests in flight finish under the old one).
    /// An invalid file changes nothing: its problems come back, every one with its path.
    /// Breakers, rate-limit buckets kept in memory and metrics start afresh in the new
    /// stack (Prometheus' `rate()` reads the counters' restart as a reset).
    pub async fn reload(&self) -> Result<u64, ConfigError> {
        let Source::File(path) = &self.shared.source else {
            return Err(issue(
                "",
                "no configuration file to read again: the gateway started without --config",
            ));
        };
        let config = GatewayConfig::from_file(path)?;
        self.reload_with(config).await
    }

    /// Serves `config` from the next request on (see [`reload`](Self::reload)).
    pub async fn reload_with(&self, config: GatewayConfig) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.shared.reloads.lock().await;
        let old = self.current();
        let gen = self.shared.factory.build(config).await?;
        let (a, b) = (&old.config.gateway, &gen.config.gateway);
        if a.listen != b.listen || a.admin_listen != b.admin_listen {
            tracing::warn!("listen addresses changed in the file: they apply at the next start");
        }
        let number = gen.number;
        let token = &gen.config.gateway.admin_token;
        if !token.is_empty() && **self.shared.admin_token.read() != **token {
            *self.shared.admin_token.write() = token.as_str().into();
            tracing::info!("admin token replaced: the old one is refused from now on");
        }
        *self.shared.current.write() = Arc::new(gen);
        tracing::info!(generation = number, "configuration reloaded");
        Ok(number)
    }

    /// Starts a graceful shutdown: readiness fails at once, the listeners stop accepting,
    /// requests in flight finish (for `shutdown_grace` at most), spans are flushed; then
    /// [`serve`](Self::serve) returns.
    pub fn shutdown(&self) {
        self.current().garrison.begin_shutdown();
        self.shared.shutdown.send_replace(true);
    }

    /// Binds the main listener (`GARRISON_LISTEN`, else `[gateway] listen`) and the admin
    /// listener (`admin_listen`, unless it is off).
    pub async fn bind(&self) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
        bind(&self.current().config.gateway).await
    }

    /// Serves the proxy on `main` and the admin API on `admin` until
    /// [`shutdown`](Self::shutdown), then drains.
    pub async fn serve(
        &self,
        main: TcpListener,
        admin: Option<TcpListener>,
    ) -> std::io::Result<()> {
        if let Some(admin) = admin {
            let gw = self.clone();
            tokio::spawn(async move { gw.serve_admin(admin).await });
        }
        self.serve_main(main).await;
        // the last requests' spans
        let tracer = self.current().garrison.tracer().clone();
        if tokio::time::timeout(Duration::from_secs(5), tracer.flush())
            .await
            .is_err()
        {
            tracing::warn!("spans not flushed within 5s: dropped");
        }
        Ok(())
    }

    async fn serve_main(&self, listener: TcpListener) {
        let max = self.current().config.gateway.max_connections;
        // a connection holds a slot until it closes: all slots back means all closed
        let slots = Arc::new(Semaphore::new(max));
        let mut stop = self.shared.shutdown.subscribe();
        // thread per core, as nginx's workers: each worker runs its connections and their
        // upstream pools on its own event loop; this loop only accepts and deals them out
        let (drained_tx, drained) = watch::channel(false);
        let workers: Vec<_> = (0..self.shared.factory.workers)
            .map(|i| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
                let worker = Worker {
                    index: i,
                    shared: self.shared.clone(),
                    stop: self.shared.shutdown.subscribe(),
                    drained: drained.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("gateway-worker-{i}"))
                    .spawn(move || worker.run(rx));
                (tx, thread)
            })
            .collect();
        let mut next = 0usize;
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("never closed"),
                _ = stop.changed() => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // out of file descriptors, say: wait a little rather than spin
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            next = (next + 1) % workers.len();
            let _ = workers[next].0.send((stream, peer, slot));
        }
        drop(listener);
        let grace = self.current().config.gateway.shutdown_grace;
        let open = max - slots.available_permits();
        tracing::info!(connections = open, ?grace, "draining");
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over: the remaining connections are closed");
        }
        drained_tx.send_replace(true);
        for (tx, thread) in workers {
            drop(tx);
            if let Ok(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }

    async fn serve_admin(&self, listener: TcpListener) {
        let mut stop = self.shared.shutdown.subscribe();
        // scrapers, probes and operators: a few connections at once, never a crowd
        let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let gw = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(crate::admin::handle(&gw, req).await) }
                });
                let mut b = auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                // at most a minute each, whatever the client does
                let _ = tokio::time::timeout(
                    ADMIN_CONNECTION_LIFETIME,
                    b.serve_connection(TokioIo::new(stream), svc),
                )
                .await;
            });
        }
    }
}

/// Binds the listeners of `g` (see [`Gateway::bind`]), before a gateway is made: the
/// binary prints the address it bound first.
pub async fn bind(g: &GatewaySection) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
    let main = match std::env::var("GARRISON_LISTEN")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(addr) => TcpListener::bind(addr.as_str()).await,
        None => TcpListener::bind(g.listen).await,
    }?;
    let admin = match g.admin_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    Ok((main, admin))
}

/// Waits for a new connection's first byte: a client that sends nothing within the header
/// read timeout is closed before any protocol is chosen.
async fn first_byte(stream: &TcpStream, wait: Duration) -> bool {
    let mut one = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.peek(&mut one)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Connections the admin listener serves at once; more wait in the kernel's backlog.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The longest an admin connection stays open.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The number of header fields hyper's HTTP/1 parser takes when none is set.
const HYPER_MAX_HEADERS: usize = 100;

fn connection_builder(g: &GatewaySection) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let mut h1 = b.http1();
    // the coarse timer: a deadline per request head without tokio's timer wheel
    h1.timer(crate::timer::CoarseTimer)
        .header_read_timeout(g.header_read_timeout)
        .max_buf_size(g.max_header_bytes);
    // hyper's own limit is 100 too, parsed into arrays on the stack; a limit set explicitly
    // makes it fill an array of that size on every request
    if g.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(g.max_headers);
    }
    // HTTP/2's limits set here rather than left to hyper's defaults: streams at once, the
    // header list, streams reset before they were accepted (rapid reset, CVE-2023-44487) and
    // streams the server had to reset for errors (CONTINUATION floods), and pings that close
    // a connection whose peer is gone
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(g.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    if g.http2 {
        b
    } else {
        b.http1_only()
    }
}

type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// One worker thread: a single-threaded event loop serving the connections dealt to it.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    drained: watch::Receiver<bool>,
}

impl Worker {
    fn run(self, mut accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>) {
        crate::proxy::set_worker(self.index);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, worker = self.index, "worker runtime did not start");
                return;
            }
        };
        let Worker {
            shared,
            stop,
            mut drained,
            ..
        } = self;
        rt.block_on(async move {
            while let Some((stream, peer, slot)) = accepted.recv().await {
                let Ok(stream) = TcpStream::from_std(stream) else {
                    continue;
                };
                let gen = shared.current.read().clone();
                let limits = &gen.config.gateway;
                let builder = connection_builder(limits);
                let wait = limits.header_read_timeout;
                // shared with the tunnel a request of the connection may become
                let slot = Arc::new(slot);
                let tunnel = ConnectionSlot::new(slot.clone(), stop.clone());
                let conn = Conn::new(shared.clone(), gen.clone(), peer, tunnel);
                let requests = conn.requests.clone();
                let stalls = conn.stalls.clone();
                let idle = limits.idle_timeout;
                let send_timeout = limits.send_timeout;
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = stream.set_nodelay(true);
                    if !first_byte(&stream, wait).await {
                        return;
                    }
                    // with upgrades: a request may switch protocols (see `tunnel`)
                    let io = crate::timer::SendTimeout::new(TokioIo::new(stream), send_timeout);
                    let c = builder.serve_connection_with_upgrades(io, conn);
                    tokio::pin!(c);
                    tokio::select! {
                        _ = c.as_mut() => {}
                        _ = async { drop(stop.wait_for(|s| *s).await) } => {
                            // finish the request in flight, then close (HTTP/2: GOAWAY)
                            c.as_mut().graceful_shutdown();
                            let _ = c.await;
                        }
                        _ = idle_watch(&requests, wait, idle) => {
                            // the same, and a client that will not finish gets as long again
                            c.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(idle.max(wait), c).await;
                        }
                        _ = stalls.watch(send_timeout) => {
                            // an HTTP/2 client left a response waiting for the send timeout:
                            // closed at once, with every response (and upstream connection)
                            // it held
                        }
                    }
                });
            }
            // no more connections: serve the open ones until the drain is over
            drop(drained.wait_for(|d| *d).await);
        });
    }
}

/// One connection's service: each request runs through the generation in force when it
/// arrives. The connection keeps its own copy of the stack and looks at the shared one
/// only when a reload changed the generation (one relaxed load per request), so that
/// workers share no lock or reference count on the way.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Handed to a request that may switch protocols (see `tunnel`).
    slot: ConnectionSlot,
    /// Only this connection's task calls it: no lock.
    cached: std::cell::RefCell<(u64, GatewayService, PathRules)>,
    /// Requests the connection has started: its watchdog closes it when this stands still
    /// (see [`idle_watch`]).
    requests: Arc<std::sync::atomic::AtomicU64>,
    /// Its HTTP/2 responses' waits for the client (see [`crate::stall`]).
    stalls: Arc<crate::stall::Stalls>,
}

/// Returns once a connection started no request for `first` after its first byte, or for
/// `idle` since its last one: an HTTP/2 client that sends its preface (or a byte of it) and
/// nothing more, or that keeps a connection open and idle, gives its place back.
async fn idle_watch(requests: &std::sync::atomic::AtomicU64, first: Duration, idle: Duration) {
    let mut seen = 0;
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let now = requests.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
        wait = idle;
    }
}

/// How a generation treats request paths and hosts before routing.
#[derive(Clone, Copy, Debug)]
struct PathRules {
    normalize: bool,
    slashes: crate::path::EscapedSlashes,
}

impl PathRules {
    fn of(gen: &Generation) -> Self {
        Self {
            normalize: gen.config.gateway.normalize_path,
            slashes: gen.config.gateway.escaped_slashes,
        }
    }
}

/// A request the gateway refuses before any part of the stack chooses a route for it: the
/// proxy answers it `400` with this reason (so the stack still measures and traces it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

/// Puts `req` in the form every part of the stack routes by: its path normalised (see
/// [`crate::path`]), or [`Refused`] when it cannot be, or when its `Host` is ambiguous
/// (RFC 9112 §3.2: two `Host` fields, or one that the absolute-form target contradicts).
fn prepare<B>(req: &mut Request<B>, rules: PathRules) {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        req.extensions_mut()
            .insert(Refused("more than one Host header"));
        return;
    }
    if let (Some(h), Some(a)) = (host, req.uri().authority()) {
        if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
            req.extensions_mut()
                .insert(Refused("the Host header contradicts the request target"));
            return;
        }
    }
    if !rules.normalize {
        return;
    }
    let path = req.uri().path();
    match crate::path::normalize(path, rules.slashes) {
        Ok(std::borrow::Cow::Borrowed(_)) => {}
        Ok(std::borrow::Cow::Owned(p)) => {
            let pq = match req.uri().query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            let mut parts = req.uri().clone().into_parts();
            match pq.parse() {
                Ok(pq) => {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
                Err(_) => {
                    req.extensions_mut()
                        .insert(Refused("the path cannot be forwarded"));
                }
            }
        }
        Err(bad) => {
            req.extensions_mut().insert(Refused(bad.reason()));
        }
    }
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        gen: Arc<Generation>,
        peer: SocketAddr,
        slot: ConnectionSlot,
    ) -> Self {
        Self {
            shared,
            peer,
            slot,
            cached: std::cell::RefCell::new((gen.number, gen.service.clone(), PathRules::of(&gen))),
            requests: Arc::default(),
            stalls: Arc::default(),
        }
    }
}

type GatewayFuture = <GatewayService as Service<Request<Incoming>>>::Future;

impl hyper::service::Service<Request<Incoming>> for Conn {
    type Response = <GatewayService as Service<Request<Incoming>>>::Response;
    type Error = <GatewayService as Service<Request<Incoming>>>::Error;
    type Future = futures_util::future::Either<
        GatewayFuture,
        tower::util::Oneshot<GatewayService, Request<Incoming>>,
    >;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // hyper hands a request that may switch protocols its half of the switch, and
        // leaves the extensions of any other one empty: this look costs next to nothing
        let may_switch = req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some();
        self.requests.fetch_add(1, Ordering::Relaxed);
        req.extensions_mut().insert(PeerAddr(self.peer));
        if may_switch {
            req.extensions_mut().insert(self.slot.clone());
        }
        if req.version() == http::Version::HTTP_2 {
            self.stalls.start();
            req.extensions_mut().insert(self.stalls.clone());
        }
        let mut cached = self.cached.borrow_mut();
        let now = self.shared.factory.number.load(Ordering::Acquire);
        if cached.0 != now {
            let gen = self.shared.current.read().clone();
            *cached = (gen.number, gen.service.clone(), PathRules::of(&gen));
        }
        prepare(&mut req, cached.2);
        // the stack is always ready (no layer of it applies backpressure); should that
        // change, a clone waits for readiness as tower asks
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match cached.1.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => futures_util::future::Either::Left(cached.1.call(req)),
            _ => futures_util::future::Either::Right(cached.1.clone().oneshot(req)),
        }
    }
}

impl Factory {
    async fn build(&self, config: GatewayConfig) -> Result<Generation, ConfigError> {
        let mut upstreams = BTreeMap::new();
        for (name, u) in &config.gateway.upstreams {
            let mut authorities = Vec::with_capacity(u.addresses.len());
            for a in &u.addresses {
                if a == DEMO_ADDRESS {
                    let addr = self
                        .demo
                        .get_or_try_init(crate::demo::start)
                        .await
                        .map_err(|e| {
                            issue(
                                &format!("gateway.upstreams.{name}.addresses"),
                                format!("the demo upstream did not start: {e}"),
                            )
                        })?;
                    authorities.push(
                        addr.to_string()
                            .parse()
                            .expect("an address is an authority"),
                    );
                } else {
                    authorities.push(crate::config::authority(a).expect("validated"));
                }
            }
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(name, u, authorities, self.clock.clone())),
            );
        }
        let mut stack = config.stack_config();
        // no handler of the user's runs inside the gateway: nothing reads the context
        stack.trace.otel_context = false;
        // at the edge, a client's traceparent must not decide what is recorded
        stack.trace.sampled_from = garrison::config::SampledFrom::TrustedProxies;
        if config.gateway.observability == crate::config::Observability::Admin {
            stack.health.enabled = false;
        }
        let garrison = Garrison::builder()
            .config(stack)
            .clock(self.clock.clone())
            .build()?;
        garrison
            .metrics()
            .register_collector(Arc::new(GatewayCollector {
                upstreams: upstreams.clone(),
                tunnels: self.tunnels.clone(),
            }));
        if !upstreams.is_empty() {
            // read from the addresses' own state: cheap enough to look every second
            garrison
                .health()
                .register(
                    "gateway-upstreams",
                    UpstreamsCheck {
                        upstreams: upstreams.clone(),
                    },
                    CheckOptions::deep()
                        .critical(false)
                        .interval(Duration::from_secs(1)),
                )
                .map_err(|e| issue("health.checks.gateway-upstreams", e.to_string()))?;
        }
        let proxy = Proxy::new(&config, &upstreams, self.workers, self.tunnels.clone());
        let number = self.number.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Generation {
            number,
            service: garrison.layer().layer(proxy),
            config,
            garrison,
            upstreams,
        })
    }
}

/// 32 bytes of the operating system's CSPRNG, in hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // no entropy source at all: refuse to guess one
        panic!("the operating system's random source failed: {e}");
    }
    let mut out = [0u8; 64];
    garrison::garrison_core::hex_encode(&bytes, &mut out).to_owned()
}
