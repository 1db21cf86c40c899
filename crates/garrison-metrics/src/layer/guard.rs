use std::sync::Arc;
use std::time::Instant;

use garrison_core::{ErrorType, MethodLabel, TraceId};

use crate::registry::{Observation, Shared};

/// Carries one request's measurements from the call to the end of its response body, and
/// records them exactly once: when told the outcome, or, if dropped first, as cancelled.
pub(crate) struct RequestGuard {
    shared: Arc<Shared>,
    start: Instant,
    route: Option<u32>,
    method: MethodLabel,
    status: u16,
    request_size: Option<u64>,
    response_size: u64,
    trace: Option<TraceId>,
    done: bool,
}

impl RequestGuard {
    #[inline]
    pub(crate) fn start(
        shared: Arc<Shared>,
        route: Option<u32>,
        method: MethodLabel,
        request_size: Option<u64>,
        trace: Option<TraceId>,
    ) -> Self {
        shared.request_started(method);
        let start = shared.clock.now();
        Self {
            shared,
            start,
            route,
            method,
            status: 0,
            request_size,
            response_size: 0,
            trace,
            done: false,
        }
    }

    #[inline]
    pub(crate) fn set_status(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
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
            Ok(s) => self.shared.classifier.classify_status(s),
            Err(_) => ErrorType::None,
        };
        self.finish(error);
    }

    #[inline]
    pub(crate) fn finish(&mut self, error: ErrorType) {
        if self.done {
            return;
        }
        self.done = true;
        let end = self.shared.clock.now();
        self.shared.record(&Observation {
            route: self.route,
            method: self.method,
            status: self.status,
            error,
            duration: end.saturating_duration_since(self.start),
            request_size: self.request_size,
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
