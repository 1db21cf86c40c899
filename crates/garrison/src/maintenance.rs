//! [`Maintenance`]: the switch that answers every request but the health routes and the
//! scrape with `503` and a message, for an operator in an emergency or a planned window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use parking_lot::RwLock;

/// The maintenance switch of a stack: off by default. Cheap to clone; clones share the
/// switch (the gateway keeps one across reloads).
///
/// While it is on, the stack answers every request except the health routes and the
/// scrape with `503 Service Unavailable`, `Retry-After`, `Cache-Control: no-store` and
/// `{"error":"maintenance","message":…,"retry_after_seconds":…}`: probes still tell the
/// truth about the instance, and Prometheus still scrapes it. A request costs one atomic
/// load while it is off.
///
/// ```
/// use std::time::Duration;
/// use garrison::Garrison;
///
/// let garrison = Garrison::builder().build().unwrap();
/// garrison.maintenance().enable("Moving the database; back by 14:30 UTC", Duration::from_secs(600));
/// assert!(garrison.maintenance().is_on());
/// garrison.maintenance().disable();
/// ```
#[derive(Clone, Debug, Default)]
pub struct Maintenance {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    on: AtomicBool,
    retry_after: AtomicU64,
    message: RwLock<Arc<str>>,
}

/// The longest message kept.
const MAX_MESSAGE: usize = 1024;

impl Maintenance {
    /// A switch that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns it on: from the next request, `message` (cut to 1 KiB) is the answer, with
    /// `Retry-After: retry_after` (whole seconds, at least 1).
    pub fn enable(&self, message: &str, retry_after: Duration) {
        let message = garrison_core::truncate_str(message, MAX_MESSAGE);
        *self.inner.message.write() = message.into();
        self.inner
            .retry_after
            .store(retry_after.as_secs().max(1), Ordering::Relaxed);
        if !self.inner.on.swap(true, Ordering::Release) {
            tracing::warn!(message, "maintenance on: requests are answered 503");
        }
    }

    /// Turns it off: requests are served again.
    pub fn disable(&self) {
        if self.inner.on.swap(false, Ordering::Release) {
            tracing::info!("maintenance off: requests are served again");
        }
    }

    /// Whether it is on.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.inner.on.load(Ordering::Acquire)
    }

    /// The message and the `Retry-After` seconds, while it is on.
    pub fn state(&self) -> Option<(Arc<str>, u64)> {
        self.is_on().then(|| {
            (
                self.inner.message.read().clone(),
                self.inner.retry_after.load(Ordering::Relaxed),
            )
        })
    }

    /// The answer to a request while it is on.
    pub(crate) fn response(&self) -> Response<Bytes> {
        let (message, secs) = self.state().unwrap_or_else(|| ("".into(), 1));
        let mut body = String::with_capacity(64 + message.len());
        body.push_str("{\"error\":\"maintenance\",\"message\":");
        garrison_core::push_json_string(&mut body, &message);
        body.push_str(",\"retry_after_seconds\":");
        body.push_str(itoa::Buffer::new().format(secs));
        body.push('}');
        garrison_core::refusal(StatusCode::SERVICE_UNAVAILABLE, secs, Bytes::from(body))
    }
}
