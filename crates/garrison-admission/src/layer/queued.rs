//! [`Queued`]: a request in the admission queue, until it has a slot or is shed with `503`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use crate::{Acquire, Permit, Shed};

pin_project! {
    /// A request waiting in the admission queue, from [`AdmissionLayer::admit`]: a future of
    /// its permit, or of the `503` to send when it is shed. Dropped, it leaves the queue.
    pub struct Queued {
        #[pin]
        acquire: Acquire,
        retry_after: u64,
    }
}

impl Queued {
    pub(super) fn new(acquire: Acquire, retry_after: u64) -> Self {
        Self {
            acquire,
            retry_after,
        }
    }
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

impl Future for Queued {
    type Output = Result<Permit, Response<Bytes>>;

    // the rejection is the answer itself, handed on by value once
    #[allow(clippy::result_large_err)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let retry_after = *this.retry_after;
        this.acquire
            .poll(cx)
            .map(|r| r.map_err(|shed| shed_response(shed, retry_after)))
    }
}

/// The answer to a shed request.
fn shed_response(shed: Shed, retry_after: u64) -> Response<Bytes> {
    let body = format!(
        "{{\"error\":\"overloaded\",\"reason\":\"{}\",\"priority\":\"{}\",\"retry_after_seconds\":{retry_after}}}",
        shed.reason, shed.priority
    );
    garrison_core::refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        retry_after,
        Bytes::from(body),
    )
}
