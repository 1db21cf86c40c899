//! HTTP/1.1 connections to the addresses of one upstream, kept per worker thread.
//!
//! Each worker has its own idle list per address: a request takes the connection used last
//! (its buffers are warm), sends on it, and the response body gives it back when it ends.
//! No task of its own drives a connection: the request that holds it does, in its own task,
//! while it waits for the response head, and then its response body does while it streams.
//! So no request crosses threads or tasks, and no lock is ever contended. An idle
//! connection is not polled: one its upstream closed meanwhile is seen at its next check-out
//! (the request goes over the next one), or closed with the idle timeout, whichever comes
//! first; until then its socket waits in the kernel. A response body dropped before its end
//! takes its connection with it (the rest of the body is never read), as does one marked
//! `Connection: close`, or one that ends while its request is still being sent (an upstream
//! that answered early): the next request would wait behind a body that may never end.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::failure::{failure_after_send, source_chain, Failure, Lost};

/// The idle connections of one upstream: `workers` × `addresses` LIFO lists.
#[derive(Debug)]
pub(crate) struct Http1Pool {
    /// Each its own allocation, counted by its own worker's requests only: no reference
    /// count or lock shared by two workers.
    slots: Box<[Arc<WorkerPools>]>,
    addresses: usize,
    connect_timeout: Duration,
    /// Connections open to each address, over every worker, and the most there may be.
    open: Box<[Arc<AtomicUsize>]>,
    max_open: usize,
}

/// One open connection's place among its address's `max_connections_per_address`, given
/// back when the connection goes.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's idle connections to one address. It lives while the pool or a response
/// body of its connections does; its idle connections close with it.
#[derive(Debug)]
#[repr(align(128))]
struct WorkerPools {
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    /// Whether this slot's worker runs a task that closes connections idle too long.
    reaping: AtomicBool,
    /// Ticks of that task, one per quarter of the idle timeout: a connection given back
    /// in tick `e` is closed in tick `e + TICKS + 1`, after between 1× and 1.25× the idle
    /// timeout (no clock is read per request).
    tick: AtomicU64,
}

/// Ticks per idle timeout.
const TICKS: u64 = 4;

/// The most idle connections a worker keeps per address; more are closed when given back.
const MAX_IDLE: usize = 1024;

struct Idle {
    up: Box<PooledConn>,
    tick: u64,
}

/// Both halves of one HTTP/1.1 connection, boxed once per connection so that a check-out,
/// a response body and a check-in move a pointer.
struct PooledConn {
    tx: SendRequest<UpstreamBody>,
    link: Link,
    _place: Place,
}

/// The connection's own half: what moves it on, driven by whoever holds the connection.
/// `None` once the connection has ended (closed by either side, or failed).
struct Link(Option<Connection<TokioIo<TcpStream>, UpstreamBody>>);

impl Link {
    /// Moves the connection on as far as it goes now (writes the request, reads the
    /// response, hands both over); `cx` is woken when it can move again. An ended
    /// connection is dropped here, and with it whatever waits on it learns that it ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.0 {
            if Pin::new(conn).poll(cx).is_ready() {
                self.0 = None;
            }
        }
    }

    fn ended(&self) -> bool {
        self.0.is_none()
    }

    /// Drives the connection, then polls `f`, which only the connection's progress can make
    /// ready (the response head, a frame of its body, its readiness for a request), first
    /// with a waker that does nothing, then, if `f` is not ready, once more with the task's.
    /// A result handed over inside `drive` then does not wake the task a second time, nor
    /// does the connection's wish to be polled again that the caller's next poll of `f` (the
    /// body) fulfils anyway: the task waits only after a `drive` with its own waker, when
    /// nothing but the connection can move `f`, and then the connection's wakers wake it.
    fn poll_after<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.drive(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(r) = f(&mut Context::from_waker(Waker::noop())) {
            return Poll::Ready(r);
        }
        self.poll_driven(cx, f)
    }

    /// Drives the connection with the task's waker, then polls `f` as `poll_after` does:
    /// for a wait that cannot be over yet, such as the response to a request just queued.
    /// Once the connection has ended, `f` is polled with the task's waker (what waits on an
    /// ended connection is told so, and is ready).
    fn poll_driven<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.drive(cx);
        if self.ended() {
            f(cx)
        } else {
            f(&mut Context::from_waker(Waker::noop()))
        }
    }
}

impl PooledConn {
    /// Whether a request can be sent: `false` when the connection has ended. A connection
    /// that asked for its next request before it went idle is not driven first (one its
    /// upstream closed meanwhile gives the request back unsent).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Self { tx, link, .. } = self;
        if let Poll::Ready(r) = tx.poll_ready(&mut Context::from_waker(Waker::noop())) {
            return Poll::Ready(r.is_ok());
        }
        link.poll_after(cx, |q| tx.poll_ready(q).map(|r| r.is_ok()))
    }
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("tick", &self.tick).finish()
    }
}

impl Http1Pool {
    pub(crate) fn new(
        workers: usize,
        addresses: usize,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_open: usize,
    ) -> Self {
        let slots = (0..workers.max(1) * addresses.max(1))
            .map(|_| {
                Arc::new(WorkerPools {
                    idle: Mutex::new(Vec::new()),
                    idle_timeout,
                    reaping: AtomicBool::new(false),
                    tick: AtomicU64::new(0),
                })
            })
            .collect();
        Self {
            slots,
            addresses: addresses.max(1),
            connect_timeout,
            open: (0..addresses.max(1)).map(|_| Arc::default()).collect(),
            max_open: max_open.max(1),
        }
    }

    /// Sends `req` to address `at` (`authority`) from worker `worker`: over an idle
    /// connection when one is left, else over a new one. A request that an idle connection
    /// closed before taking goes over the next one.
    ///
    /// An idle connection can also be closed by its upstream just as a request goes out on
    /// it (the keep-alive race: the upstream's close crosses the request on the wire). An
    /// idempotent request without a body that such a reused connection loses before any
    /// answer is sent once more, over a new connection, as browsers and nginx do; any other
    /// request is never sent twice.
    ///
    /// A request that none of went out (the new connection was refused, timed out or closed
    /// first) comes back in the error's [`Lost::unsent`], body untouched, for another address.
    pub(crate) async fn send(
        &self,
        worker: usize,
        at: usize,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, Lost> {
        let workers = self.slots.len() / self.addresses;
        let slot = &self.slots[(worker % workers) * self.addresses + at];
        let mut replayed = false;
        loop {
            // a replay goes over a new connection: the next idle one may be as stale
            let popped = if replayed {
                None
            } else {
                slot.idle.lock().pop()
            };
            let (mut up, fresh) = match popped {
                Some(idle) => (idle.up, false),
                None => match self.connect(slot, at, authority).await {
                    Ok(up) => (up, true),
                    Err(failure) => return Err(unsent(failure, req)),
                },
            };
            if !poll_fn(|cx| up.poll_ready(cx)).await {
                if fresh {
                    let failure = Failure::Connect("the new connection closed".into());
                    return Err(unsent(failure, req));
                }
                continue; // closed while idle
            }
            let replay = if fresh || replayed {
                None
            } else {
                replay_copy(&req)
            };
            let mut head = pin!(up.tx.try_send_request(req));
            let link = &mut up.link;
            // the first time, the request was only queued: the connection writes it and then
            // waits on its socket, so it is driven with the task's waker straight away
            let mut queued = true;
            let answer = poll_fn(|cx| {
                if std::mem::take(&mut queued) {
                    link.poll_driven(cx, |q| head.as_mut().poll(q))
                } else {
                    link.poll_after(cx, |q| head.as_mut().poll(q))
                }
            });
            match answer.await {
                Ok(resp) => return Ok(PooledBody::pooled(resp, slot.clone(), up)),
                Err(mut e) => match (e.take_message(), replay) {
                    // never written: the connection was closing; the next one takes it
                    (Some(back), _) if !fresh => req = back,
                    // nothing was sent: as safe to try elsewhere as a refused connection
                    (Some(back), _) => {
                        return Err(unsent(Failure::Connect(source_chain(e.error())), back));
                    }
                    // written, and the reused connection closed before any answer
                    (None, Some(copy)) if lost_before_answer(e.error()) => {
                        req = copy;
                        replayed = true;
                    }
                    (None, _) => return Err(failure_after_send(e.error()).into()),
                },
            }
        }
    }

    async fn connect(
        &self,
        slot: &Arc<WorkerPools>,
        at: usize,
        authority: &Authority,
    ) -> Result<Box<PooledConn>, Failure> {
        let open = &self.open[at % self.open.len()];
        if open.fetch_add(1, Ordering::Relaxed) >= self.max_open {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Failure::Saturated);
        }
        let place = Place(open.clone());
        let stream = connect_tcp(authority, self.connect_timeout).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(source_chain(&e)))?;
        if !slot.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(slot)));
        }
        Ok(Box::new(PooledConn {
            tx,
            link: Link(Some(conn)),
            _place: place,
        }))
    }
}

/// A TCP connection to `authority` (without Nagle's delay), made within `timeout`.
pub(crate) async fn connect_tcp(
    authority: &Authority,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    // `[::1]` names an IPv6 address: without its brackets
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = (host, authority.port_u16().unwrap_or(80));
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(Failure::ConnectTimeout),
        Ok(Err(e)) => return Err(Failure::Connect(format!("tcp connect error: {e}"))),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `failure`, with `req` given back: none of it went out.
pub(crate) fn unsent(failure: Failure, req: Request<UpstreamBody>) -> Lost {
    Lost {
        failure,
        unsent: Some(Box::new(req)),
    }
}

/// Whether `e` is a connection lost under a written request before any answer came: its
/// end (an incomplete message), or the reset that an upstream's socket closed before the
/// request arrived answers with. A malformed answer is an answer, and is not.
fn lost_before_answer(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    e.is_incomplete_message()
        || io
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted))
}

/// A copy of `req` to send again if the keep-alive race takes it: only for an idempotent
/// method (RFC 9110, 9.2.2) and a request without a body, the only ones that may be
/// repeated without the client's say.
fn replay_copy(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if !req.method().is_idempotent() || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Closes the connections of `slot` that stayed idle for the idle timeout, until the slot
/// is gone (a reload replaced its pool, and its last response body ended).
async fn reap(slot: Weak<WorkerPools>) {
    let every = match slot.upgrade() {
        Some(s) => (s.idle_timeout / TICKS as u32).max(Duration::from_millis(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(slot) = slot.upgrade() else { return };
        let now = slot.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let stale: Vec<Idle> = {
            let mut idle = slot.idle.lock();
            // oldest first: the list is pushed and popped at its end
            let fresh = idle
                .iter()
                .position(|i| now - i.tick <= TICKS)
                .unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        // dropped outside the lock: each drop closes its connection
        drop(stale);
    }
}

/// The HTTP/1.1 connection a response body comes on: driven while the body streams, and
/// given back to its slot at the end unless the upstream said `Connection: close`.
struct Driven {
    up: Box<PooledConn>,
    slot: Arc<WorkerPools>,
    keep: bool,
}

impl Driven {
    fn give_back(mut self) {
        if !self.keep {
            return;
        }
        // only an idle connection goes back, one that asks for its next request: one still
        // writing this request's body (its upstream answered before the body ended) would
        // hold up the next request behind a body that may never end, so it is closed
        if !self.up.tx.is_ready() {
            self.up.link.drive(&mut Context::from_waker(Waker::noop()));
        }
        if self.up.link.ended() || !self.up.tx.is_ready() {
            return;
        }
        let tick = self.slot.tick.load(Ordering::Relaxed);
        let mut idle = self.slot.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { up: self.up, tick });
        }
    }
}

/// An upstream's response body, streamed. The HTTP/1.1 connection it came on goes back to
/// its pool when the body ends.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Driven>,
    /// The longest the upstream may leave the body waiting between two frames, and the
    /// timer of the wait in progress (made only when a wait begins).
    idle: Option<Duration>,
    stall: Option<crate::timer::Deadline>,
    /// Over HTTP/2 to the client: when the body waits for the client (see [`crate::stall`]).
    client: Option<crate::stall::Waiting>,
}

/// Why an upstream's response body failed on its way.
#[derive(Debug)]
pub enum UpstreamBodyError {
    /// The connection failed.
    Hyper(hyper::Error),
    /// The upstream sent nothing for the route's `body_idle_timeout`.
    Idle(Duration),
}

impl std::fmt::Display for UpstreamBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hyper(e) => write!(f, "upstream body: {e}"),
            Self::Idle(d) => write!(f, "upstream body: nothing for {d:?}"),
        }
    }
}

impl std::error::Error for UpstreamBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Hyper(e) => Some(e),
            Self::Idle(_) => None,
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.conn.as_ref().is_some_and(|c| c.keep))
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    /// A body whose connection is not pooled here (HTTP/2: the connection is shared and
    /// driven by its own task).
    pub(crate) fn unpooled(resp: Response<Incoming>) -> Response<Self> {
        resp.map(|body| Self {
            body,
            conn: None,
            idle: None,
            stall: None,
            client: None,
        })
    }

    fn pooled(
        resp: Response<Incoming>,
        slot: Arc<WorkerPools>,
        up: Box<PooledConn>,
    ) -> Response<Self> {
        let keep = !resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let mut resp = resp.map(|body| Self {
            body,
            conn: Some(Driven { up, slot, keep }),
            idle: None,
            stall: None,
            client: None,
        });
        // an empty body may never be polled: the connection is free now
        if resp.body().body.is_end_stream() {
            resp.body_mut().end();
        }
        resp
    }

    fn end(&mut self) {
        if let Some(c) = self.conn.take() {
            c.give_back();
        }
    }

    /// Fails the body when the upstream sends nothing of it for `d`.
    pub(crate) fn idle_timeout(&mut self, d: Duration) {
        self.idle = Some(d);
    }

    /// Counts the body's waits for the client among its HTTP/2 connection's `stalls`.
    pub(crate) fn watched(&mut self, stalls: &std::sync::Arc<crate::stall::Stalls>) {
        if !self.body.is_end_stream() {
            self.client = Some(crate::stall::Waiting::new(stalls.clone()));
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        if let Some(w) = &mut self.client {
            w.end();
        }
        match self.as_mut().poll_upstream(cx) {
            Poll::Ready(frame) => {
                let this = &mut *self;
                this.stall = None;
                if let (Some(w), Some(Ok(_))) = (&mut this.client, &frame) {
                    // hyper comes back for more once the client took this much
                    w.begin();
                }
                Poll::Ready(frame.map(|f| f.map_err(UpstreamBodyError::Hyper)))
            }
            Poll::Pending => {
                let this = &mut *self;
                let Some(d) = this.idle else {
                    return Poll::Pending;
                };
                // the coarse timer: no allocation, no entry in tokio's wheel
                let stall = this
                    .stall
                    .get_or_insert_with(|| crate::timer::Deadline::after(d));
                if Pin::new(stall).poll(cx).is_ready() {
                    // the rest of the body will not come: the connection goes with it
                    this.conn = None;
                    this.stall = None;
                    return Poll::Ready(Some(Err(UpstreamBodyError::Idle(d))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl PooledBody {
    fn poll_upstream(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(match &mut this.conn {
            // what the connection read with the response head is often the whole body:
            // taken without moving the connection on
            Some(c) =>
                match Pin::new(&mut this.body).poll_frame(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(frame) => Poll::Ready(frame),
                    Poll::Pending =>
                        c.up.link
                            .poll_after(cx, |q| Pin::new(&mut this.body).poll_frame(q)),
                },
            None => Pin::new(&mut this.body).poll_frame(cx),
        });
        match &frame {
            None => this.end(),
            Some(Err(_)) => this.conn = None,
            Some(Ok(_)) if this.body.is_end_stream() => this.end(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }
}

/// One request's check-out, send and response head, as a tower service's future.
pub(crate) type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<PooledBody>, Lost>> + Send + 'a>>;
