//! Why an upstream gave no response, told from the errors of hyper, hyper-util and tokio by
//! their types and kinds, never by their messages.

use http::Request;
use http_body_util::LengthLimitError;

use crate::body::UpstreamBody;

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

/// The failure of a request whose connection broke after it went out: its own body's
/// limit, when that is what ended it.
pub(crate) fn failure_after_send(e: &(dyn std::error::Error + 'static)) -> Failure {
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
pub(crate) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
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
}
