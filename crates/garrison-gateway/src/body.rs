//! The request body on its way upstream: the client's, watched so that a failure it caused
//! is blamed on it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;

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
pub(crate) struct BodyWatch(std::sync::atomic::AtomicU8);

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

    /// The client's body failed: malformed, or cut short.
    pub(crate) fn broke(&self) -> bool {
        self.get() & BROKEN != 0
    }

    /// The body's last poll found nothing yet: the upstream was waiting for the client.
    pub(crate) fn waiting(&self) -> bool {
        self.get() & WAITING != 0
    }

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ClientBody {
    /// `inner`, watched unless it is empty; the watch is shared with the caller.
    pub(crate) fn new(inner: Incoming) -> (Self, Option<Arc<BodyWatch>>) {
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
