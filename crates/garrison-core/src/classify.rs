use http::StatusCode;

/// Why a request counts as failed, in the low-cardinality form of OpenTelemetry's
/// `error.type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ErrorType {
    /// Not a failure.
    None = 0,
    /// The response status is one the [`FailureClassifier`] counts as a failure; the
    /// `error.type` value is the status code itself (e.g. `503`).
    Status,
    /// The inner service returned an error instead of a response.
    Service,
    /// The response body failed while streaming.
    Body,
    /// The request was cancelled: the client went away before the response finished.
    Cancelled,
    /// A timeout fired.
    Timeout,
    /// The service panicked (and the stack answered `500`).
    Panic,
}

impl ErrorType {
    /// The label text for the kinds that are not [`ErrorType::Status`] (which uses the status
    /// code) or [`ErrorType::None`] (no label).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorType::None => "",
            ErrorType::Status => "status",
            ErrorType::Service => "service_error",
            ErrorType::Body => "body_error",
            ErrorType::Cancelled => "cancelled",
            ErrorType::Timeout => "timeout",
            ErrorType::Panic => "panic",
        }
    }

    /// Whether this is a failure at all.
    pub const fn is_failure(self) -> bool {
        !matches!(self, ErrorType::None)
    }

    /// The kind with the given `repr(u8)` value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => ErrorType::None,
            1 => ErrorType::Status,
            2 => ErrorType::Service,
            3 => ErrorType::Body,
            4 => ErrorType::Cancelled,
            5 => ErrorType::Timeout,
            6 => ErrorType::Panic,
            _ => return None,
        })
    }
}

/// Decides which outcomes are failures. Metrics, the breaker and the trace layer all ask the
/// same classifier, so "error rate" means one thing everywhere.
///
/// By default a failure is: an error from the service, a timeout, or a `5xx` response. axum
/// handlers never return `Err`, so classifying by status is what makes failures visible at
/// all. Individual statuses can be added (e.g. `429` from an upstream) or removed (e.g. `501`).
///
/// Lookups are one bit test; the classifier is `Copy`-cheap to clone (128 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureClassifier {
    // bit n set = status n is a failure, for n in 0..1024
    failures: [u64; 16],
}

impl Default for FailureClassifier {
    fn default() -> Self {
        let mut c = Self { failures: [0; 16] };
        for s in 500..600 {
            c.set(s, true);
        }
        c
    }
}

impl FailureClassifier {
    /// The default: `5xx` responses are failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// A classifier that counts no status as a failure (errors, cancellations and timeouts
    /// still are).
    pub fn no_status_failures() -> Self {
        Self { failures: [0; 16] }
    }

    /// Also counts `status` as a failure.
    pub fn with_failure_status(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), true);
        self
    }

    /// Does not count `status` as a failure.
    pub fn without_failure_status(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), false);
        self
    }

    fn set(&mut self, status: u16, on: bool) {
        let (w, b) = ((status as usize >> 6) & 15, status & 63);
        if on {
            self.failures[w] |= 1 << b;
        } else {
            self.failures[w] &= !(1 << b);
        }
    }

    /// Whether a response with `status` is a failure.
    #[inline]
    pub fn is_failure_status(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        (self.failures[(s as usize >> 6) & 15] >> (s & 63)) & 1 == 1
    }

    /// The error type of a completed response with `status`.
    #[inline]
    pub fn classify_status(&self, status: StatusCode) -> ErrorType {
        if self.is_failure_status(status) {
            ErrorType::Status
        } else {
            ErrorType::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_5xx_only() {
        let c = FailureClassifier::default();
        for s in 100..1000u16 {
            let st = StatusCode::from_u16(s).unwrap();
            assert_eq!(c.is_failure_status(st), (500..600).contains(&s), "{s}");
        }
    }

    #[test]
    fn statuses_can_be_added_and_removed() {
        let c = FailureClassifier::default()
            .with_failure_status(StatusCode::TOO_MANY_REQUESTS)
            .without_failure_status(StatusCode::NOT_IMPLEMENTED);
        assert!(c.is_failure_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!c.is_failure_status(StatusCode::NOT_IMPLEMENTED));
        assert!(c.is_failure_status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(c.classify_status(StatusCode::OK), ErrorType::None);
        assert_eq!(
            c.classify_status(StatusCode::BAD_GATEWAY),
            ErrorType::Status
        );
        assert!(!FailureClassifier::no_status_failures()
            .is_failure_status(StatusCode::INTERNAL_SERVER_ERROR));
    }

    #[test]
    fn error_type_round_trips() {
        for v in 0..7u8 {
            assert_eq!(ErrorType::from_u8(v).unwrap() as u8, v);
        }
        assert_eq!(ErrorType::from_u8(7), None);
    }
}
