//! Serving a [`Gateway`]: the listeners, the worker threads and their connections, the
//! connection limits and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use garrison::garrison_core::PeerAddr;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::{Service, ServiceExt};

use crate::config::GatewaySection;
use crate::gateway::{Gateway, GatewayService, Generation, Shared};
use crate::tunnel::ConnectionSlot;

impl Gateway {
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
            tokio::spawn(crate::admin::serve(self.clone(), admin));
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

/// Puts `req` in the form every part of the stack routes by: its path normalised (see
/// [`crate::path`]), or [`Refused`](crate::path::Refused) when it cannot be, or when its `Host` is ambiguous
/// (RFC 9112 §3.2: two `Host` fields, or one that the absolute-form target contradicts).
fn prepare<B>(req: &mut Request<B>, rules: PathRules) {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        req.extensions_mut()
            .insert(crate::path::Refused("more than one Host header"));
        return;
    }
    if let (Some(h), Some(a)) = (host, req.uri().authority()) {
        if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
            req.extensions_mut().insert(crate::path::Refused(
                "the Host header contradicts the request target",
            ));
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
                        .insert(crate::path::Refused("the path cannot be forwarded"));
                }
            }
        }
        Err(bad) => {
            req.extensions_mut()
                .insert(crate::path::Refused(bad.reason()));
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
