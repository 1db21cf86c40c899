//! Finishing a request's trace once: the server span's end, status and error, and the
//! access log line.

use std::borrow::Cow;
use std::sync::Arc;

use crate::context::{CurrentGuard, RequestContext};
use crate::span::{SpanEvent, SpanRecord, Value};

pub(super) struct Access {
    pub(super) method: http::Method,
    pub(super) route: String,
    pub(super) path: String,
    pub(super) enduser: Option<String>,
}

/// Ends the server span (and the access log line) once, when the body ends, or when the
/// request is dropped.
pub(super) struct Finisher {
    pub(super) root: Option<Box<SpanRecord>>,
    pub(super) ctx: Arc<RequestContext>,
    pub(super) span: Option<Box<tracing::Span>>,
    /// When the request started, by the clock that will time its end.
    pub(super) started: Option<(garrison_core::Tick, garrison_core::SharedClock)>,
    pub(super) status: u16,
    pub(super) access: Option<Box<Access>>,
    pub(super) done: bool,
    /// What the stack caught (a panic, an error answered `500`): the span's `exception`
    /// event and its `error.type`.
    pub(super) caught: Option<Box<(SpanEvent, &'static str)>>,
}

impl Finisher {
    pub(super) fn finish(&mut self, error: Option<&'static str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let took = self
            .started
            .as_ref()
            .map_or(std::time::Duration::ZERO, |(t, clock)| {
                clock.tick().saturating_since(*t)
            });
        if let Some(a) = &self.access {
            let _e = self.span.as_ref().map(|s| s.enter());
            let _current = CurrentGuard::set(&self.ctx);
            tracing::info!(
                target: "garrison_trace::access",
                method = %a.method,
                route = %a.route,
                path = %a.path,
                status = self.status,
                duration_ms = took.as_secs_f64() * 1e3,
                // recorded only when the layer names users and this request has one
                enduser_id = a.enduser.as_deref(),
                "request"
            );
        }
        let caught = self.caught.take();
        let error = error.or(caught.as_ref().map(|c| c.1));
        let event = caught.map(|c| c.0);
        #[cfg(feature = "otel")]
        if let Some(o) = self.ctx.otel.as_ref().filter(|o| o.is_recording()) {
            let (attributes, error) = self.outcome(error);
            o.end(took, attributes, error, event);
            return;
        }
        let (Some(mut root), Some(local)) = (self.root.take(), self.ctx.local.clone()) else {
            return;
        };
        let (attributes, error) = self.outcome(error);
        root.end = root.start + took;
        root.attributes.extend(attributes);
        root.error.clone_from(&error);
        root.events.extend(event);
        local.finish(*root, error.is_some(), took);
    }

    /// The server span's last attributes and its error, if it failed: only a recorded
    /// request pays for them.
    fn outcome(
        &self,
        error: Option<&'static str>,
    ) -> (Vec<(&'static str, Value)>, Option<Cow<'static, str>>) {
        let error = error
            .map(Cow::Borrowed)
            .or_else(|| (self.status >= 500).then(|| Cow::Owned(self.status.to_string())));
        let mut attributes = Vec::with_capacity(2);
        if self.status != 0 {
            attributes.push((
                "http.response.status_code",
                Value::Int(i64::from(self.status)),
            ));
        }
        if let Some(e) = &error {
            attributes.push(("error.type", Value::Str(e.clone())));
        }
        (attributes, error)
    }

    /// Notes what the stack caught, for a recorded span.
    #[cold]
    pub(super) fn caught_cold(&mut self, c: &garrison_core::Caught) {
        if self.needs_end() {
            let kind = match c.kind {
                garrison_core::CaughtKind::Panic => "panic",
                _ => "service_error",
            };
            self.caught = Some(Box::new((SpanEvent::exception(c), kind)));
        }
    }

    /// Whether anything waits for the end of the response body.
    #[inline(always)]
    pub(super) fn needs_end(&self) -> bool {
        #[cfg(feature = "otel")]
        if self.ctx.otel.as_ref().is_some_and(|o| o.is_recording()) {
            return true;
        }
        self.root.is_some() || self.access.is_some()
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if self.status == 0 {
            self.finish(Some("cancelled"));
        } else {
            self.finish(None);
        }
    }
}
