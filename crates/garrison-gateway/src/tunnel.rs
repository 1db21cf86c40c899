//! Protocol upgrades (WebSocket): a request that asks to switch protocols goes upstream over
//! a connection of its own, and once the upstream answers `101 Switching Protocols` the
//! client's connection and that one are joined into a tunnel that carries bytes both ways.
//!
//! The request and the `101` pass through the whole stack like any other exchange: they are
//! traced, measured, rate limited and counted by the breaker. The bytes of the tunnel are
//! not: they are the switched protocol's, no longer HTTP. A tunnel ends when either side
//! closes it (a half-close is passed on), when no byte has moved either way for the
//! upstream's `tunnel_idle_timeout`, or when the gateway shuts down; until then it holds its
//! client connection's place among `max_connections`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::Service;

use crate::body::UpstreamBody;
use crate::failure::{failure_after_send, source_chain, Failure, Lost};
use crate::forwarding::connection_tokens;
use crate::metrics::{TunnelEnd, TunnelStats};
use crate::pool::{connect_tcp, unsent};

/// What a request that may be tunnelled asks for: the `Upgrade` value to send on (the
/// offered protocols that `allowed` names), the client connection's half of the switch, and
/// the connection's slot.
pub(crate) struct Requested {
    pub(crate) upgrade: HeaderValue,
    pub(crate) client: OnUpgrade,
    pub(crate) slot: Option<ConnectionSlot>,
}

/// The client connection's place among `max_connections`, and the gateway's shutdown signal:
/// put in the extensions of a request that may switch protocols by the connection that
/// serves it, so that a tunnel goes on holding the place after the HTTP connection has
/// handed itself over, and ends when the gateway shuts down.
#[derive(Clone)]
pub(crate) struct ConnectionSlot {
    _held: Arc<tokio::sync::OwnedSemaphorePermit>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl ConnectionSlot {
    pub(crate) fn new(
        held: Arc<tokio::sync::OwnedSemaphorePermit>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self { _held: held, stop }
    }
}

/// Whether the request of `parts` asks to switch to a protocol of `allowed` (lower case):
/// HTTP/1.1, `Connection: upgrade`, an `Upgrade` that offers one, and a server connection
/// that can hand itself over. Takes the connection's half of the switch out of the
/// extensions when it does.
pub(crate) fn requested(parts: &mut http::request::Parts, allowed: &[String]) -> Option<Requested> {
    if parts.version != Version::HTTP_11
        || !connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let mut offered = BytesMut::new();
    for v in parts.headers.get_all(header::UPGRADE) {
        let Ok(v) = v.to_str() else { continue };
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // `websocket`, `h2c`, `foo/2`: the name is what comes before any version
            let name = p.split('/').next().unwrap_or_default().trim();
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                if !offered.is_empty() {
                    offered.put_slice(b", ");
                }
                offered.put_slice(p.as_bytes());
            }
        }
    }
    if offered.is_empty() {
        return None;
    }
    let upgrade = HeaderValue::from_maybe_shared(offered.freeze()).ok()?;
    let client = parts.extensions.remove::<OnUpgrade>()?;
    let slot = parts.extensions.remove::<ConnectionSlot>();
    Some(Requested {
        upgrade,
        client,
        slot,
    })
}

/// Marks `h` as the request or answer of a protocol switch to `upgrade`, after its
/// hop-by-hop headers were removed.
pub(crate) fn mark_upgrade(h: &mut HeaderMap, upgrade: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade);
}

/// A request that asks to switch protocols, sent to one address over a new HTTP/1.1
/// connection (never a pooled one: after a switch the connection is no longer HTTP), as a
/// tower service for [`PropagateLayer`](garrison::garrison_trace::PropagateLayer).
pub(crate) struct TunnelClient<'a> {
    pub(crate) authority: &'a Authority,
    pub(crate) connect_timeout: Duration,
}

impl<'a> Service<Request<UpstreamBody>> for TunnelClient<'a> {
    type Response = Response<Incoming>;
    type Error = Lost;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Lost>> + Send + 'a>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Lost>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<UpstreamBody>) -> Self::Future {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        let (authority, timeout) = (self.authority, self.connect_timeout);
        Box::pin(async move {
            let stream = match connect_tcp(authority, timeout).await {
                Ok(s) => s,
                Err(failure) => return Err(unsent(failure, req)),
            };
            let (mut tx, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => return Err(unsent(Failure::Connect(source_chain(&e)), req)),
            };
            // the connection hands itself over to the answer's upgrade once a `101` came,
            // and otherwise serves this one exchange and closes when `tx` is dropped
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            tx.send_request(req)
                .await
                .map_err(|e| failure_after_send(&e).into())
        })
    }
}

/// Joins the client's connection and the upstream's once both have switched, and carries
/// bytes between them until either side closes, until none has moved for `idle` (the
/// tunnel is closed after between 1× and 2× `idle` without a byte), or until the gateway
/// shuts down. The client connection's `slot` is held until then.
pub(crate) async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    slot: Option<ConnectionSlot>,
    stats: Arc<TunnelStats>,
) {
    let mut stop = slot.as_ref().map(|s| s.stop.clone());
    let shutdown = async {
        match &mut stop {
            Some(s) => drop(s.wait_for(|stop| *stop).await),
            None => std::future::pending().await,
        }
    };
    let (client, upstream) = tokio::join!(client, upstream);
    let (client, upstream) = match (client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "a protocol switch did not complete");
            stats.failed();
            return;
        }
    };
    let mut open = stats.opened();
    let moved = Arc::new(Moved::default());
    let mut client = Counted::new(TokioIo::new(client), &moved, FROM_CLIENT);
    let mut upstream = Counted::new(TokioIo::new(upstream), &moved, FROM_UPSTREAM);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "a tunnel ended with an error");
                open.end(TunnelEnd::Error);
            }
        }
        () = idle_out(&moved, &stats, idle) => {
            tracing::debug!(idle_for = ?idle, "a tunnel was closed after moving nothing");
            open.end(TunnelEnd::Idle);
        }
        () = shutdown => {
            tracing::debug!("a tunnel was closed by the shutdown");
            open.end(TunnelEnd::Shutdown);
        }
    }
    moved.count(&stats);
    drop(slot);
}

/// [`Moved`]'s side of the bytes read from the client (and written to the upstream).
const FROM_CLIENT: usize = 0;
/// [`Moved`]'s side of the bytes read from the upstream (and written to the client).
const FROM_UPSTREAM: usize = 1;

/// The bytes one tunnel has moved each way, and how many of them the gateway's counters
/// have: they are counted there at each idle check and when the tunnel ends, not per read,
/// so that tunnels on different workers write no shared counter per read.
#[derive(Default)]
struct Moved {
    read: [AtomicU64; 2],
    counted: [AtomicU64; 2],
}

impl Moved {
    fn total(&self) -> u64 {
        self.read.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// Adds what was read since the last call to `stats`.
    fn count(&self, stats: &TunnelStats) {
        for side in [FROM_CLIENT, FROM_UPSTREAM] {
            let now = self.read[side].load(Ordering::Relaxed);
            let before = self.counted[side].swap(now, Ordering::Relaxed);
            stats.moved(side == FROM_CLIENT, now - before);
        }
    }
}

/// Returns once a check, every `idle`, finds that no byte moved since the previous one;
/// each check counts the bytes moved into `stats`.
async fn idle_out(moved: &Moved, stats: &TunnelStats, idle: Duration) {
    let mut seen = moved.total();
    loop {
        tokio::time::sleep(idle).await;
        moved.count(stats);
        let now = moved.total();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// One side of a tunnel, counting the bytes read from it into its side of [`Moved`].
struct Counted<T> {
    io: T,
    moved: Arc<Moved>,
    side: usize,
}

impl<T> Counted<T> {
    fn new(io: T, moved: &Arc<Moved>, side: usize) -> Self {
        Self {
            io,
            moved: moved.clone(),
            side,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.read[self.side].fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], version: Version) -> http::request::Parts {
        let mut b = Request::get("/chat").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        // stands for the one hyper's server connection puts in a request that may switch
        // (hyper makes a live one no other way); only its presence matters here
        parts
            .extensions
            .insert(hyper::upgrade::on(Request::new(())));
        parts
    }

    fn allowed() -> Vec<String> {
        vec!["websocket".to_owned()]
    }

    #[test]
    fn a_websocket_handshake_is_requested_whatever_the_case_and_list() {
        let mut p = parts(
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
            Version::HTTP_11,
        );
        let r = requested(&mut p, &allowed()).expect("a switch to websocket");
        assert_eq!(r.upgrade, "WebSocket");
        assert!(p.extensions.get::<OnUpgrade>().is_none(), "taken out");
    }

    #[test]
    fn only_the_allowed_protocols_of_an_offer_go_on() {
        let mut p = parts(
            &[
                ("connection", "upgrade"),
                ("upgrade", "h2c, websocket/13, foo"),
            ],
            Version::HTTP_11,
        );
        assert_eq!(
            requested(&mut p, &allowed()).unwrap().upgrade,
            "websocket/13"
        );
    }

    #[test]
    fn no_switch_without_connection_upgrade_http_1_1_or_an_allowed_protocol() {
        let cases: [(&[(&str, &str)], Version); 5] = [
            (&[("upgrade", "websocket")], Version::HTTP_11),
            (
                &[("connection", "close"), ("upgrade", "websocket")],
                Version::HTTP_11,
            ),
            (
                &[("connection", "upgrade"), ("upgrade", "h2c")],
                Version::HTTP_11,
            ),
            (&[("connection", "upgrade")], Version::HTTP_11),
            (
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                Version::HTTP_10,
            ),
        ];
        for (headers, version) in cases {
            let mut p = parts(headers, version);
            assert!(
                requested(&mut p, &allowed()).is_none(),
                "{headers:?} {version:?}"
            );
            assert!(p.extensions.get::<OnUpgrade>().is_some(), "left in place");
        }
        let mut p = parts(
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            Version::HTTP_11,
        );
        assert!(requested(&mut p, &[]).is_none(), "upgrades = []");
    }
}
