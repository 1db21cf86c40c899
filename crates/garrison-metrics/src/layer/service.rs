use std::sync::Arc;
use std::task::{Context, Poll};

use garrison_core::{RequestInfo, RouteResolver, TraceContext};
use http::{header, Request, Response};
use tower::Service;

use super::guard::RequestGuard;
use super::{MetricsBody, ResponseFuture};
use crate::registry::Shared;

/// The service made by [`MetricsLayer`](super::MetricsLayer).
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
    resolver: RouteResolver,
}

impl<S> MetricsService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, resolver: RouteResolver) -> Self {
        Self {
            inner,
            shared,
            resolver,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService")
            .field("inner", &self.inner)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

/// The request body size when it is known without reading the body: `Content-Length`, or 0
/// when the request declares no body at all. Chunked bodies have no known size.
#[inline]
fn request_body_size<B>(req: &Request<B>) -> Option<u64> {
    let headers = req.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(v) => std::str::from_utf8(v.as_bytes()).ok()?.parse().ok(),
        None if headers.contains_key(header::TRANSFER_ENCODING) => None,
        None => Some(0),
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for MetricsService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body,
{
    type Response = Response<MetricsBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let route = self.resolver.resolve(&req);
        let guard = start(&self.shared, &req, &RequestInfo::new(&req, route.as_str()));
        ResponseFuture::new(self.inner.call(req), guard)
    }
}

/// Starts measuring `req` under the route and method of `info`: its request size and trace
/// (the trace part's decision in `info`, else the request's [`TraceContext`]).
#[inline]
pub(crate) fn start<B>(
    shared: &Arc<Shared>,
    req: &Request<B>,
    info: &RequestInfo<'_>,
) -> RequestGuard {
    let method = info.method();
    let route = shared.route_id(info.route());
    let trace = if !shared.exemplars {
        None
    } else if let Some(given) = info.trace() {
        given
    } else {
        let given = req.extensions().get::<TraceContext>();
        match given {
            Some(t) => t.sampled.then_some(t.trace_id),
            #[cfg(feature = "otel")]
            None => current_otel_trace(),
            #[cfg(not(feature = "otel"))]
            None => None,
        }
    };
    RequestGuard::start(
        shared.clone(),
        route,
        method,
        request_body_size(req),
        trace,
        info.now(),
    )
}

/// The trace of the current OpenTelemetry span, when it is sampled: a service traced by its own
/// OpenTelemetry layer (outside this one) gets its exemplars too.
#[cfg(feature = "otel")]
fn current_otel_trace() -> Option<garrison_core::TraceId> {
    use opentelemetry::trace::TraceContextExt;
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        (sc.is_sampled() && sc.is_valid())
            .then(|| garrison_core::TraceId::from_bytes(sc.trace_id().to_bytes()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sizes() {
        let r = |h: Option<(&str, &str)>| {
            let mut b = Request::post("/");
            if let Some((k, v)) = h {
                b = b.header(k, v);
            }
            request_body_size(&b.body(()).unwrap())
        };
        assert_eq!(r(None), Some(0));
        assert_eq!(r(Some(("content-length", "42"))), Some(42));
        assert_eq!(r(Some(("content-length", "-1"))), None);
        assert_eq!(r(Some(("content-length", "99999999999999999999999"))), None);
        assert_eq!(r(Some(("transfer-encoding", "chunked"))), None);
    }
}
