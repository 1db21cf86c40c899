use std::sync::Arc;

use garrison_core::{Caught, CaughtKind, ErrorType, MethodLabel, Tick, TraceId};

use crate::registry::{Observation, Shared};

/// Carries one request's measurements from the call to the end of its response body, and
/// records them exactly once: when told the outcome, or, if dropped first, as cancelled.
///
/// Kept small (64 bytes): it travels inside the response future and body, which are moved
/// by value several times per request.
pub(crate) struct RequestGuard {
    shared: Arc<Shared>,
    start: Tick,
    trace: Option<TraceId>,
    /// `UNKNOWN_SIZE` when the request body size is not known.
    request_size: u64,
    response_size: u64,
    /// `NO_ROUTE` when the series cap refused the route.
    route: u32,
    status: u16,
    method: MethodLabel,
    done: bool,
    /// What the stack caught (a panic, an error it answered `500` for) decides the error type
    /// over the status.
    caught: ErrorType,
}

const NO_ROUTE: u32 = u32::MAX;
const UNKNOWN_SIZE: u64 = u64::MAX;

impl RequestGuard {
    #[inline]
    pub(crate) fn start(
        shared: Arc<Shared>,
        route: Option<u32>,
        method: MethodLabel,
        request_size: Option<u64>,
        trace: Option<TraceId>,
        at: Option<Tick>,
    ) -> Self {
        shared.request_started(method);
        let start = at.unwrap_or_else(|| shared.clock.tick());
        Self {
            shared,
            start,
            trace,
            request_size: request_size.unwrap_or(UNKNOWN_SIZE),
            response_size: 0,
            route: route.unwrap_or(NO_ROUTE),
            status: 0,
            method,
            done: false,
            caught: ErrorType::None,
        }
    }

    #[inline]
    pub(crate) fn set_status(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
    }

    /// The inner service answered: its status is known, its body is measured until it ends.
    #[inline]
    pub(crate) fn respond<B: http_body::Body>(
        mut self,
        resp: http::Response<B>,
    ) -> http::Response<super::MetricsBody<B>> {
        self.note_caught(resp.extensions());
        let status = resp.status();
        resp.map(|body| self.respond_parts(status, body))
    }

    /// A response the stack made for a caught panic or error (its [`Caught`] in
    /// `extensions`) is recorded as one: `error_type="panic"` and `garrison_panics_total`,
    /// or `service_error`.
    #[inline]
    pub(crate) fn note_caught(&mut self, extensions: &http::Extensions) {
        if let Some(c) = extensions.get::<Caught>() {
            self.caught_cold(c);
        }
    }

    #[cold]
    fn caught_cold(&mut self, c: &Caught) {
        self.caught = match c.kind {
            CaughtKind::Panic => {
                let route = (self.route != NO_ROUTE).then_some(self.route);
                self.shared.count_panic(route, c.location.as_deref());
                ErrorType::Panic
            }
            _ => ErrorType::Service,
        };
    }

    /// [`respond`](Self::respond) for a response taken apart.
    #[inline]
    pub(crate) fn respond_parts<B: http_body::Body>(
        mut self,
        status: http::StatusCode,
        body: B,
    ) -> super::MetricsBody<B> {
        self.set_status(status);
        super::MetricsBody::new(body, self)
    }

    /// Whether HTTP lets this response carry a body (RFC 9110 §6.4.1).
    #[inline]
    pub(crate) fn response_has_body(&self) -> bool {
        !(self.method == MethodLabel::Head
            || self.status < 200
            || self.status == 204
            || self.status == 304)
    }

    #[inline]
    pub(crate) fn add_response_bytes(&mut self, n: usize) {
        self.response_size = self.response_size.saturating_add(n as u64);
    }

    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The response finished normally: the outcome depends on its status.
    #[inline]
    pub(crate) fn complete(&mut self) {
        let error = match http::StatusCode::from_u16(self.status) {
            _ if self.caught != ErrorType::None => self.caught,
            Ok(s) => self.shared.classifier.classify_status(s),
            Err(_) => ErrorType::None,
        };
        self.finish(error);
    }

    #[inline]
    /// The inner service failed with an error instead of a response: recorded as the `500`
    /// a server answers it with (so that the 5xx of error ratios and SLO rules count it),
    /// with `error_type="service_error"`.
    pub(crate) fn service_failed(&mut self) {
        self.set_status(http::StatusCode::INTERNAL_SERVER_ERROR);
        self.finish(ErrorType::Service);
    }

    pub(crate) fn finish(&mut self, error: ErrorType) {
        if self.done {
            return;
        }
        self.done = true;
        let end = self.shared.clock.tick();
        self.shared.record(&Observation {
            route: (self.route != NO_ROUTE).then_some(self.route),
            method: self.method,
            status: self.status,
            error,
            duration_nanos: end.nanos_since(self.start),
            request_size: (self.request_size != UNKNOWN_SIZE).then_some(self.request_size),
            response_size: self.response_size,
            trace: self.trace,
        });
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish(ErrorType::Cancelled);
        }
    }
}

impl std::fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestGuard")
            .field("method", &self.method)
            .field("status", &self.status)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
