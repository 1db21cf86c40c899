//! `PropagateLayer`: the client side.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::{current, RequestContext};
use crate::redact::Redaction;
use crate::span::{SpanKind, SpanRecord, Value};
use crate::w3c::format_traceparent;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Carries the current trace into outgoing requests: `traceparent` (a new client span under
/// the server span), `tracestate`, `baggage` and `x-request-id`; and, when the request's trace
/// is recorded, a client span with the OpenTelemetry HTTP client conventions
/// (`http.request.method`, `server.address`, `server.port`, `url.full` with redacted query
/// parameters, `http.response.status_code`, `error.type` for 4xx, 5xx and errors), ended when
/// the response head arrives.
///
/// The context is the outgoing request's [`RequestContext`] extension if it has one (copy it
/// from the incoming request in a proxy), or else the request being served on this thread
/// ([`current`]).
///
/// ```
/// use garrison_trace::PropagateLayer;
/// use tower::ServiceBuilder;
///
/// let client = ServiceBuilder::new()
///     .layer(PropagateLayer::new())
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = client;
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct PropagateLayer {
    redaction: Arc<Redaction>,
}

impl PropagateLayer {
    /// A layer with the default [`Redaction`] of `url.full`.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `url.full` redacts.
    pub fn redaction(mut self, r: Redaction) -> Self {
        self.redaction = Arc::new(r);
        self
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = PropagateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateService {
            inner,
            redaction: self.redaction.clone(),
        }
    }
}

/// The service made by [`PropagateLayer`].
#[derive(Clone, Debug)]
pub struct PropagateService<S> {
    inner: S,
    redaction: Arc<Redaction>,
}

/// The client span of an outgoing call, recorded by garrison's tracer or by an OpenTelemetry
/// pipeline.
enum ClientSpan {
    Garrison {
        ctx: Arc<RequestContext>,
        record: SpanRecord,
        started: Instant,
    },
    #[cfg(feature = "otel")]
    Otel {
        span: crate::otel::OtelRequest,
        started: Instant,
    },
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PropagateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = PropagateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let ctx = req
            .extensions()
            .get::<Arc<RequestContext>>()
            .cloned()
            .or_else(current);
        let Some(ctx) = ctx else {
            #[cfg(feature = "otel")]
            otel_current(req.headers_mut());
            return PropagateFuture {
                inner: self.inner.call(req),
                span: None,
                #[cfg(feature = "otel")]
                client_cx: None,
                #[cfg(not(feature = "otel"))]
                client_cx: (),
            };
        };
        let method = garrison_core::MethodLabel::from_method(req.method());
        #[cfg(feature = "otel")]
        let otel = ctx
            .otel
            .as_ref()
            .and_then(|o| o.child(SpanKind::Client, method.as_str()));
        #[cfg(feature = "otel")]
        let ids = otel
            .as_ref()
            .and_then(|o| crate::otel::ids(&o.cx))
            .map(|(_, span, sampled)| (span, sampled));
        #[cfg(not(feature = "otel"))]
        let ids = None;
        let (span_id, sampled) = ids.unwrap_or_else(|| (crate::ids::span_id(), ctx.sampled));
        let h = req.headers_mut();
        let tp = format_traceparent(ctx.trace_id, span_id, sampled);
        // owned whole by one allocation: a clone of the request (a proxy's copy of one it may
        // send again) counts a reference, where a copied value would allocate on its first
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(tp)) {
            h.insert(TRACEPARENT.clone(), v);
        }
        match &ctx.tracestate {
            Some(ts) => {
                h.insert(TRACESTATE.clone(), ts.clone());
            }
            // most requests have none to remove: a look at each name's length costs less
            // than hashing this one to find it (see `Incoming::extract_with`)
            None if !crate::w3c::may_hold(h, &TRACESTATE) => {}
            None => {
                h.remove(&TRACESTATE);
            }
        }
        match &ctx.baggage {
            Some(b) => {
                h.insert(BAGGAGE.clone(), b.clone());
            }
            // a proxy's copy of its client's request may hold baggage the trace layer found
            // invalid: it does not go on
            None if !crate::w3c::may_hold(h, &BAGGAGE) => {}
            None => {
                h.remove(&BAGGAGE);
            }
        }
        match h.entry(&X_REQUEST_ID) {
            http::header::Entry::Vacant(e) => {
                e.insert(ctx.request_id.to_header_value());
            }
            // the client's id that the trace layer refused: the id the client gets back
            // goes on instead
            http::header::Entry::Occupied(mut e) if !crate::layer::valid_request_id(e.get()) => {
                e.insert(ctx.request_id.to_header_value());
            }
            http::header::Entry::Occupied(_) => {}
        }
        // the client call's own context is current while the inner client works, so that
        // OpenTelemetry instrumentation inside it (and the global propagator) sees the same
        // span as the `traceparent` above
        #[cfg(feature = "otel")]
        let client_cx = match &otel {
            Some(o) => Some(o.cx.clone()),
            None => ctx
                .otel
                .as_ref()
                .map(|o| crate::otel::child_context(&o.cx, ctx.trace_id, span_id, sampled)),
        };
        #[cfg(not(feature = "otel"))]
        let client_cx = ();
        #[cfg(feature = "otel")]
        let span = match otel.filter(|o| o.is_recording()) {
            Some(o) => {
                let (_, attributes) = client_attributes(&req, method, &self.redaction);
                o.describe(Cow::Borrowed(method.as_str()), attributes);
                Some(ClientSpan::Otel {
                    span: o,
                    started: Instant::now(),
                })
            }
            None => ctx
                .local
                .is_some()
                .then(|| client_span(&req, &ctx, span_id, method, &self.redaction)),
        };
        #[cfg(not(feature = "otel"))]
        let span = ctx
            .local
            .is_some()
            .then(|| client_span(&req, &ctx, span_id, method, &self.redaction));
        let inner = {
            let _current = enter(&client_cx);
            self.inner.call(req)
        };
        PropagateFuture {
            inner,
            span,
            client_cx,
        }
    }
}

/// The client call's context, made current (feature `otel`).
#[cfg(feature = "otel")]
type ClientCx = Option<opentelemetry::Context>;
#[cfg(not(feature = "otel"))]
type ClientCx = ();

#[cfg(feature = "otel")]
fn enter(cx: &ClientCx) -> Option<opentelemetry::ContextGuard> {
    cx.as_ref().map(|c| c.clone().attach())
}

#[cfg(not(feature = "otel"))]
fn enter(_: &ClientCx) {}

/// No garrison request is current: the current OpenTelemetry span, if any (a span of the
/// user's own, or a task that carries the request's context), is the caller.
#[cfg(feature = "otel")]
fn otel_current(h: &mut http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    let (Some(trace), Some(span_id)) = (
        garrison_core::TraceId::from_bytes(sc.trace_id().to_bytes()),
        crate::w3c::SpanId::from_bytes(sc.span_id().to_bytes()),
    ) else {
        return;
    };
    let tp = format_traceparent(trace, span_id, sc.is_sampled());
    if let Ok(v) = HeaderValue::from_bytes(&tp) {
        h.insert(TRACEPARENT.clone(), v);
    }
    let ts = sc.trace_state().header();
    match HeaderValue::from_str(&ts) {
        Ok(v) if !ts.is_empty() => {
            h.insert(TRACESTATE.clone(), v);
        }
        _ => {
            h.remove(&TRACESTATE);
        }
    }
}

/// The client span's name and attributes in the OpenTelemetry HTTP client conventions.
fn client_attributes<B>(
    req: &Request<B>,
    method: garrison_core::MethodLabel,
    redaction: &Redaction,
) -> (&'static str, Vec<(&'static str, Value)>) {
    let uri = req.uri();
    let mut attributes: Vec<(&'static str, Value)> = Vec::with_capacity(8);
    attributes.push((
        "http.request.method",
        Value::Str(Cow::Borrowed(method.as_str())),
    ));
    if let Some(host) = uri.host() {
        attributes.push(("server.address", Value::Str(Cow::Owned(host.to_owned()))));
    }
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    if let Some(p) = port {
        attributes.push(("server.port", Value::Int(i64::from(p))));
    }
    let mut full = String::new();
    if let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) {
        full.push_str(scheme);
        full.push_str("://");
        // never the user info
        full.push_str(auth.as_str().rsplit('@').next().unwrap_or_default());
    }
    full.push_str(&redaction.path_and_query(uri));
    attributes.push(("url.full", Value::Str(Cow::Owned(full))));
    (method.as_str(), attributes)
}

fn client_span<B>(
    req: &Request<B>,
    ctx: &Arc<RequestContext>,
    span_id: crate::w3c::SpanId,
    method: garrison_core::MethodLabel,
    redaction: &Redaction,
) -> ClientSpan {
    let (name, attributes) = client_attributes(req, method, redaction);
    ClientSpan::Garrison {
        ctx: ctx.clone(),
        record: SpanRecord {
            trace_id: ctx.trace_id,
            span_id,
            parent: Some(ctx.span_id),
            parent_remote: false,
            name: Cow::Borrowed(name),
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes,
            error: None,
            events: Vec::new(),
        },
        started: Instant::now(),
    }
}

pin_project! {
    /// The response future of [`PropagateService`].
    pub struct PropagateFuture<F> {
        #[pin]
        inner: F,
        span: Option<ClientSpan>,
        client_cx: ClientCx,
    }
}

impl<F> std::fmt::Debug for PropagateFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropagateFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for PropagateFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = {
            let _current = enter(this.client_cx);
            match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            }
        };
        if let Some(span) = this.span.take() {
            let mut attributes = Vec::with_capacity(2);
            let error: Option<Cow<'static, str>> = match &r {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    attributes.push(("http.response.status_code", Value::Int(i64::from(code))));
                    (code >= 400).then(|| Cow::Owned(code.to_string()))
                }
                Err(_) => Some(Cow::Borrowed("request_error")),
            };
            if let Some(e) = &error {
                attributes.push(("error.type", Value::Str(e.clone())));
            }
            match span {
                ClientSpan::Garrison {
                    ctx,
                    mut record,
                    started,
                } => {
                    record.end = record.start + started.elapsed();
                    record.attributes.extend(attributes);
                    record.error = error;
                    if let Some(local) = &ctx.local {
                        local.add(record);
                    }
                }
                #[cfg(feature = "otel")]
                ClientSpan::Otel { span, started } => {
                    span.end(started.elapsed(), attributes, error, None)
                }
            }
        }
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::RequestId;
    use http::HeaderMap;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// The headers `PropagateLayer` sends for an outgoing request that carries `stale` as
    /// its own `tracestate`, under a context whose `tracestate` is `ours`.
    async fn sent(stale: Option<&'static str>, ours: Option<&'static str>) -> HeaderMap {
        let seen = Arc::new(Mutex::new(HeaderMap::new()));
        let keep = seen.clone();
        let client = PropagateLayer::new().layer(tower::service_fn(move |req: Request<()>| {
            *keep.lock().unwrap() = req.headers().clone();
            async { Ok::<_, std::convert::Infallible>(Response::new(())) }
        }));
        let ctx = Arc::new(RequestContext {
            trace_id: crate::ids::trace_id(),
            span_id: crate::ids::span_id(),
            sampled: false,
            request_id: RequestId::made([b'a'; 32]),
            tracestate: ours.map(HeaderValue::from_static),
            baggage: None,
            local: None,
            #[cfg(feature = "otel")]
            otel: None,
        });
        let mut req = Request::get("http://up.example/x").body(()).unwrap();
        req.headers_mut()
            .insert("host", HeaderValue::from_static("up.example"));
        if let Some(s) = stale {
            req.headers_mut()
                .insert(TRACESTATE.clone(), HeaderValue::from_static(s));
        }
        req.extensions_mut().insert(ctx);
        client.oneshot(req).await.unwrap();
        let h = seen.lock().unwrap().clone();
        h
    }

    #[tokio::test]
    async fn an_outgoing_tracestate_is_the_contexts_or_none() {
        let h = sent(Some("stale=1"), None).await;
        assert!(h.get(&TRACESTATE).is_none(), "{h:?}");
        assert!(h.contains_key(&TRACEPARENT));
        let h = sent(Some("stale=1"), Some("ours=2")).await;
        assert_eq!(
            h.get_all(&TRACESTATE).iter().collect::<Vec<_>>(),
            ["ours=2"]
        );
        let h = sent(None, None).await;
        assert!(h.get(&TRACESTATE).is_none(), "{h:?}");
        assert_eq!(h["host"], "up.example");
    }
}
