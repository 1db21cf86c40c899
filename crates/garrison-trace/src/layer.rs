//! `TraceLayer`: the server side.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use garrison_core::{RouteResolver, TraceContext};
use http::header::{HeaderName, HeaderValue, HOST, USER_AGENT};
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::{CurrentGuard, RequestContext, RequestId};
use crate::redact::Redaction;
use crate::sampler::Start;
use crate::span::{SpanEvent, SpanKind, SpanRecord, Value};
use crate::w3c::{format_traceparent, Incoming};
use crate::{ids, Tracer};

/// `traceresponse` (W3C Trace Context Level 2).
static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// The longest incoming request id kept; a longer or non-printable one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

#[derive(Clone)]
struct Shared {
    tracer: Tracer,
    request_id: &'static HeaderName,
    trace_response: bool,
    access_log: bool,
    tracing_span: bool,
    resolver: RouteResolver,
    redaction: Arc<Redaction>,
    #[cfg(feature = "tower-http")]
    make_request_id: Option<MakeId>,
    otel_context: bool,
    /// Peers whose `traceparent` sampled flag decides; `None`: every peer's.
    sampled_from: Option<Arc<garrison_core::TrustedProxies>>,
}

/// The user's `tower_http::request_id::MakeRequestId`, type-erased.
#[cfg(feature = "tower-http")]
type MakeId = Arc<dyn Fn(&Request<()>) -> Option<HeaderValue> + Send + Sync>;

/// Joins each request to its caller's trace (W3C `traceparent`, `tracestate`, `baggage`),
/// records a server span in the OpenTelemetry HTTP conventions, and gives every request an
/// id.
///
/// - The span is named `{method} {route}` (axum's `MatchedPath` or a route table; never the
///   raw path) and carries `http.request.method`, `http.route`, `url.path`, `url.scheme`,
///   `server.address`, `client.address`, `user_agent.original`,
///   `network.protocol.version`, `http.response.status_code` and `error.type`; its status is
///   an error for 5xx only; it ends when the response body ends.
/// - A malformed, duplicated or oversized header starts a fresh trace; the request goes on.
/// - `x-request-id` is taken from the caller (if printable and at most
///   [`MAX_REQUEST_ID`] bytes) or made, and returned on the response;
///   [`trace_response`](Self::trace_response) also returns a `traceresponse` header.
/// - While the request's future runs, [`current`](crate::current) returns its
///   [`RequestContext`] (ids, sampling, `tracestate` and `baggage` to pass on);
///   [`PropagateLayer`](crate::PropagateLayer) and [`json_logs`](crate::json_logs) read it.
///   A recorded request also gets garrison-core's [`TraceContext`] in its extensions, which
///   garrison-metrics turns into exemplars.
/// - While the request is served, [`current`](crate::current) names it, so that every log
///   line of [`json_logs`](crate::json_logs) carries `trace_id`, `span_id` and `request_id`
///   ([`tracing_span`](Self::tracing_span) adds a `tracing` span for other subscribers).
///
/// ```
/// use axum::{routing::get, Router};
/// use garrison_trace::{Sampler, TraceLayer, Tracer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracer = Tracer::builder().sampler(Sampler::Ratio(0.1)).build();
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "hi" }))
///     .layer(TraceLayer::new(&tracer).trace_response(true));
/// # let _ = app;
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct TraceLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer")
            .field("tracer", &self.shared.tracer)
            .finish_non_exhaustive()
    }
}

impl TraceLayer {
    /// A layer recording into `tracer`.
    pub fn new(tracer: &Tracer) -> Self {
        // garrison-core's `CatchPanicLayer` names the request in its `500`
        garrison_core::register_request_id_source(|| {
            crate::current().map(|c| c.request_id.as_str().to_owned())
        });
        Self {
            shared: Arc::new(Shared {
                tracer: tracer.clone(),
                request_id: interned(HeaderName::from_static("x-request-id")),
                trace_response: false,
                access_log: false,
                tracing_span: false,
                resolver: RouteResolver::new(),
                redaction: Arc::new(Redaction::default()),
                #[cfg(feature = "tower-http")]
                make_request_id: None,
                otel_context: true,
                sampled_from: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Lets an incoming `traceparent`'s sampled flag decide only for requests from `proxies`
    /// (default: from every caller). Other callers' traces are still joined, but this layer's
    /// sampler decides for them, with a random draw of its own, so that a client cannot force
    /// every request it sends to be recorded. (With a [`Pipeline`](crate::Pipeline), the
    /// SDK's sampler decides as it is configured.)
    pub fn sampled_from(self, proxies: garrison_core::TrustedProxies) -> Self {
        self.edit(|s| s.sampled_from = Some(Arc::new(proxies)))
    }

    /// Makes the request ids of requests that come without one, with tower-http's
    /// `MakeRequestId` (`MakeRequestUuid`, say) instead of 32 random hex digits (feature
    /// `tower-http`). The maker sees the request's method, URI, version and headers.
    #[cfg(feature = "tower-http")]
    pub fn make_request_id<M>(self, maker: M) -> Self
    where
        M: tower_http::request_id::MakeRequestId + Send + 'static,
    {
        let maker = Mutex::new(maker);
        let make: MakeId = Arc::new(move |req: &Request<()>| {
            let mut m = maker.lock().unwrap_or_else(|e| e.into_inner());
            m.make_request_id(req).map(|id| id.into_header_value())
        });
        self.edit(|s| s.make_request_id = Some(make))
    }

    /// While the request's future runs, its trace is `opentelemetry::Context::current()`
    /// (feature `otel`): OpenTelemetry spans that the handler opens, tracing-opentelemetry's
    /// included, join the request's trace under its server span. Off, where no OpenTelemetry
    /// code runs inside (a proxy), it costs nothing. With a
    /// [`pipeline`](crate::TracerBuilder::pipeline) the context is always made. Without the
    /// feature it does nothing. Default: on.
    pub fn otel_context(self, on: bool) -> Self {
        self.edit(|s| s.otel_context = on)
    }

    /// The request id header. Default: `x-request-id`.
    pub fn request_id_header(self, name: HeaderName) -> Self {
        self.edit(|s| s.request_id = interned(name))
    }

    /// Also return `traceresponse: 00-<trace>-<span>-<flags>` (W3C Trace Context level 2) so
    /// that callers can find their request's trace. Default: off.
    pub fn trace_response(self, on: bool) -> Self {
        self.edit(|s| s.trace_response = on)
    }

    /// One `tracing` event per request at its end (target `garrison_trace::access`, INFO):
    /// method, route, path with redacted query parameters, status, duration, request id.
    /// Default: off.
    pub fn access_log(self, on: bool) -> Self {
        self.edit(|s| s.access_log = on)
    }

    /// Also open a `tracing` span `request` (target `garrison_trace`, INFO) with `trace_id`,
    /// `span_id` and `request_id` around each request, for subscribers other than
    /// [`json_logs`](crate::json_logs) (which reads the current request directly). It costs
    /// a span per request in the subscriber. Default: off.
    pub fn tracing_span(self, on: bool) -> Self {
        self.edit(|s| s.tracing_span = on)
    }

    /// What the access log redacts. Default: [`Redaction::default`].
    pub fn redaction(self, r: Redaction) -> Self {
        self.edit(|s| s.redaction = Arc::new(r))
    }

    /// How routes are named when there is no `MatchedPath` (a plain hyper service).
    pub fn route_resolver(self, r: RouteResolver) -> Self {
        self.edit(|s| s.resolver = r)
    }
}

impl TraceLayer {
    /// Opens `req`'s trace, for a stack that runs tracing itself rather than as a layer (the
    /// `garrison` umbrella's one service): joins the caller's trace or starts one, sets the
    /// request id, and puts garrison-core's `TraceContext` in the extensions of a recorded
    /// request. Call the inner service inside [`TracedRequest::enter`] and hand its response
    /// to [`TracedRequest::respond`].
    ///
    /// ```
    /// use garrison_trace::{Sampler, TraceLayer, Tracer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = TraceLayer::new(&Tracer::builder().sampler(Sampler::Ratio(0.0)).build());
    /// let mut req = http::Request::get("/users/7")
    ///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    ///     .body(())
    ///     .unwrap();
    /// let traced = layer.start(&mut req);
    /// {
    ///     let _entered = traced.enter();
    ///     assert_eq!(garrison_trace::current().unwrap().trace_id.to_string(),
    ///                "4bf92f3577b34da6a3ce929d0e0e4736");
    /// }
    /// let resp = traced.respond(http::Response::new(()));
    /// assert!(resp.headers().contains_key("x-request-id"));
    /// # }
    /// ```
    #[inline]
    pub fn start<B>(&self, req: &mut Request<B>) -> TracedRequest {
        start(&self.shared, req)
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for TraceService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceService").finish_non_exhaustive()
    }
}

/// One static copy of `name` per distinct name in the process. A name parsed at run time
/// (from a configuration) holds shared bytes, and every clone or drop of it is an atomic
/// operation on one counter for all threads: the response of every request inserts a copy.
/// A static name's copies touch nothing shared.
fn interned(name: HeaderName) -> &'static HeaderName {
    static POOL: OnceLock<Mutex<HashMap<HeaderName, &'static HeaderName>>> = OnceLock::new();
    let mut pool = POOL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pool.entry(name).or_insert_with_key(|name| {
        let text: &'static str = Box::leak(name.as_str().into());
        Box::leak(Box::new(HeaderName::from_static(text)))
    })
}

pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|&c| (0x21..=0x7e).contains(&c))
}

/// Hex of a trace or span id, formatted only if a log line asks.
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 64];
        f.write_str(garrison_core::hex_encode(&self.0, &mut buf[..2 * N]))
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for TraceService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TraceBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let traced = start(&self.shared, &mut req);
        let fut = {
            let _entered = traced.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: fut,
            state: Some(traced),
        }
    }
}

/// Opens `req`'s trace: its ids, sampling, span and request id.
#[inline]
fn start<B>(sh: &Shared, req: &mut Request<B>) -> TracedRequest {
    let (incoming, given_id) = Incoming::extract_with(req.headers(), Some(sh.request_id));
    #[cfg(feature = "tower-http")]
    let request_id = {
        let given = given_id.cloned();
        tower_http_request_id(sh, req, given.as_ref())
    };
    #[cfg(not(feature = "tower-http"))]
    let request_id = match given_id {
        Some(v) if valid_request_id(v) => RequestId::given(v.clone()),
        _ => RequestId::made(ids::request_id()),
    };
    #[cfg(feature = "otel")]
    let opened = match &sh.tracer.inner.pipeline {
        Some(p) => open_in_pipeline(sh, req, &incoming, p),
        None => open(sh, req, &incoming),
    };
    #[cfg(not(feature = "otel"))]
    let opened = open(sh, req, &incoming);
    let Opened {
        trace_id,
        span_id,
        sampled,
        local,
        root,
        #[cfg(feature = "otel")]
        otel,
    } = opened;
    #[cfg(feature = "otel")]
    let otel_recording = otel.as_ref().is_some_and(|o| o.is_recording());
    #[cfg(not(feature = "otel"))]
    let otel_recording = false;
    let recorded = local.is_some() || otel_recording;
    // the clock is only kept (an `Arc` clone) by requests that time themselves
    let started = (recorded || sh.access_log).then(|| {
        let clock = sh.tracer.inner.clock.clone();
        (clock.tick(), clock)
    });
    let ctx = Arc::new(RequestContext {
        trace_id,
        span_id,
        sampled,
        request_id,
        tracestate: incoming.tracestate,
        baggage: incoming.baggage,
        local,
        #[cfg(feature = "otel")]
        otel,
    });
    let ext = req.extensions_mut();
    if recorded {
        // garrison-metrics turns it into an exemplar; unsampled requests have none
        ext.insert(TraceContext {
            trace_id,
            span_id: Some(span_id.to_bytes()),
            sampled: true,
        });
    }
    let span = if sh.tracing_span {
        Some(Box::new(tracing::info_span!(
            target: "garrison_trace",
            "request",
            trace_id = %Hex(trace_id.to_bytes()),
            span_id = %Hex(span_id.to_bytes()),
            request_id = %ctx.request_id,
        )))
    } else {
        None
    };
    let access = sh.access_log.then(|| {
        let route = sh.resolver.resolve(req).as_str().to_owned();
        Box::new(Access {
            method: req.method().clone(),
            route,
            path: sh.redaction.path_and_query(req.uri()),
        })
    });
    TracedRequest {
        finisher: Finisher {
            root,
            ctx,
            span,
            started,
            status: 0,
            access,
            done: false,
            caught: None,
        },
        request_id: sh.request_id,
        trace_response: sh.trace_response,
    }
}

/// The request id, one whichever of tower-http's request-id layers and this one runs first:
/// tower-http's `RequestId` already in the extensions (its `SetRequestIdLayer` ran first), else
/// the request's header, else the user's maker, else ours; each only when it is a sane id. The
/// id chosen goes into the extensions as tower-http's `RequestId` and into the request's header,
/// for the handler and for tower-http's layers inside this one.
#[cfg(feature = "tower-http")]
fn tower_http_request_id<B>(
    sh: &Shared,
    req: &mut Request<B>,
    given: Option<&HeaderValue>,
) -> RequestId {
    use tower_http::request_id::RequestId as TowerId;
    let theirs = req
        .extensions()
        .get::<TowerId>()
        .map(TowerId::header_value)
        .filter(|v| valid_request_id(v));
    let id = match theirs.or(given.filter(|v| valid_request_id(v))) {
        Some(v) => RequestId::given(v.clone()),
        None => sh
            .make_request_id
            .as_ref()
            .and_then(|make| {
                let mut head = Request::new(());
                *head.method_mut() = req.method().clone();
                *head.uri_mut() = req.uri().clone();
                *head.version_mut() = req.version();
                *head.headers_mut() = req.headers().clone();
                make(&head)
            })
            .filter(valid_request_id)
            .map_or_else(|| RequestId::made(ids::request_id()), RequestId::given),
    };
    let value = id.to_header_value();
    if req.headers().get(sh.request_id) != Some(&value) {
        req.headers_mut().insert(sh.request_id, value.clone());
    }
    req.extensions_mut().insert(TowerId::new(value));
    id
}

/// What opening a request's trace decided: its ids and what records its spans.
struct Opened {
    trace_id: garrison_core::TraceId,
    span_id: crate::w3c::SpanId,
    /// The sampled flag sent downstream.
    sampled: bool,
    local: Option<Arc<crate::tracer::LocalTrace>>,
    root: Option<Box<SpanRecord>>,
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::OtelRequest>,
}

/// Garrison's own tracer decides and records.
#[inline(always)]
fn open<B>(sh: &Shared, req: &Request<B>, incoming: &Incoming) -> Opened {
    let trace_id = incoming.parent.map_or_else(ids::trace_id, |p| p.trace_id);
    let span_id = ids::span_id();
    let sampler = &sh.tracer.inner.sampler;
    // a caller's sampled flag decides only when the caller is believed; otherwise the
    // sampler decides by a draw of its own, not by the caller's trace id
    let believed = match (&sh.sampled_from, &incoming.parent) {
        (Some(proxies), Some(_)) => {
            garrison_core::peer_addr(req).is_some_and(|p| proxies.is_trusted(p.ip()))
        }
        _ => true,
    };
    let (decide_by, parent) = if believed {
        (trace_id, incoming.parent.as_ref())
    } else {
        (ids::trace_id(), None)
    };
    let start = sampler.start(decide_by, parent);
    let local = (start != Start::Drop).then(|| sh.tracer.local(trace_id, start));
    let root = local.as_ref().map(|_| {
        let (name, attributes) = server_attributes(req, &sh.resolver);
        let now = SystemTime::now();
        Box::new(SpanRecord {
            trace_id,
            span_id,
            parent: incoming.parent.map(|p| p.span_id),
            parent_remote: incoming.parent.is_some(),
            name: Cow::Owned(name),
            kind: SpanKind::Server,
            start: now,
            end: now,
            attributes,
            error: None,
            events: Vec::new(),
        })
    });
    let sampled = sampler.head_flag(start, decide_by);
    Opened {
        trace_id,
        span_id,
        sampled,
        local,
        root,
        // the handler's OpenTelemetry spans join this trace, under this span
        #[cfg(feature = "otel")]
        otel: sh
            .otel_context
            .then(|| crate::otel::garrison_span(trace_id, span_id, sampled, incoming)),
    }
}

/// The OpenTelemetry pipeline decides and records (its sampler, ids and processors).
#[cfg(feature = "otel")]
#[inline(never)]
fn open_in_pipeline<B>(
    sh: &Shared,
    req: &Request<B>,
    incoming: &Incoming,
    pipeline: &crate::otel::Pipeline,
) -> Opened {
    use crate::otel::{ids as otel_ids, remote_parent, OtelRequest};
    let parent = remote_parent(incoming);
    let method = garrison_core::MethodLabel::from_method(req.method());
    let otel = OtelRequest::start(pipeline, SpanKind::Server, method.as_str(), &parent);
    let Some((trace_id, span_id, sampled)) = otel_ids(&otel.cx) else {
        // a provider that is shut down makes invalid spans: the request keeps garrison's ids
        return Opened {
            otel: None,
            ..open(sh, req, incoming)
        };
    };
    if otel.is_recording() {
        let (name, attributes) = server_attributes(req, &sh.resolver);
        otel.describe(Cow::Owned(name), attributes);
    }
    Opened {
        trace_id,
        span_id,
        sampled,
        local: None,
        root: None,
        otel: Some(otel),
    }
}

/// The server span's name (`GET /users/{id}`) and its attributes in the OpenTelemetry HTTP
/// conventions.
fn server_attributes<B>(
    req: &Request<B>,
    resolver: &RouteResolver,
) -> (String, Vec<(&'static str, Value)>) {
    let method = req.method().as_str();
    let method_label = garrison_core::MethodLabel::from_method(req.method());
    let route = resolver.resolve(req).as_str();
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method_label.as_str());
    name.push(' ');
    name.push_str(route);
    let mut attributes: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    let s = |v: &str| Value::Str(Cow::Owned(v.to_owned()));
    attributes.push((
        "http.request.method",
        Value::Str(Cow::Borrowed(method_label.as_str())),
    ));
    if method_label == garrison_core::MethodLabel::Other {
        attributes.push((
            "http.request.method_original",
            s(&method[..method.len().min(64)]),
        ));
    }
    attributes.push(("http.route", s(route)));
    attributes.push((
        "url.path",
        s(garrison_core::truncate_str(req.uri().path(), 1024)),
    ));
    attributes.push((
        "url.scheme",
        Value::Str(Cow::Borrowed(match req.uri().scheme_str() {
            Some("https") => "https",
            _ => "http",
        })),
    ));
    let host = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| strip_port(h).to_owned())
    });
    if let Some(h) = host {
        attributes.push(("server.address", s(garrison_core::truncate_str(&h, 255))));
    }
    if let Some(peer) = garrison_core::peer_addr(req) {
        attributes.push((
            "client.address",
            Value::Str(Cow::Owned(
                garrison_core::IpText::new(peer.ip()).as_str().to_owned(),
            )),
        ));
    }
    if let Some(ua) = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push((
            "user_agent.original",
            s(garrison_core::truncate_str(ua, 512)),
        ));
    }
    attributes.push((
        "network.protocol.version",
        Value::Str(Cow::Borrowed(match req.version() {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        })),
    ));
    (name, attributes)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

struct Access {
    method: http::Method,
    route: String,
    path: String,
}

/// Ends the server span (and the access log line) once, when the body ends, or when the
/// request is dropped.
struct Finisher {
    root: Option<Box<SpanRecord>>,
    ctx: Arc<RequestContext>,
    span: Option<Box<tracing::Span>>,
    /// When the request started, by the clock that will time its end.
    started: Option<(garrison_core::Tick, garrison_core::SharedClock)>,
    status: u16,
    access: Option<Box<Access>>,
    done: bool,
    /// What the stack caught (a panic, an error answered `500`): the span's `exception`
    /// event and its `error.type`.
    caught: Option<Box<(SpanEvent, &'static str)>>,
}

impl Finisher {
    fn finish(&mut self, error: Option<&'static str>) {
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
    fn caught_cold(&mut self, c: &garrison_core::Caught) {
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
    fn needs_end(&self) -> bool {
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

/// One request's trace, from [`TraceLayer::start`] until its response body ends: ids,
/// sampling, the server span and the request id.
pub struct TracedRequest {
    finisher: Finisher,
    /// The layer's request id header, interned: see [`interned`].
    request_id: &'static HeaderName,
    trace_response: bool,
}

impl std::fmt::Debug for TracedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedRequest")
            .field("request_id", &self.finisher.ctx.request_id)
            .finish_non_exhaustive()
    }
}

/// While alive, the request of a [`TracedRequest`] is [`current`](crate::current) (and its
/// `tracing` span entered): made by [`TracedRequest::enter`].
pub struct Entered<'a> {
    _span: Option<tracing::span::Entered<'a>>,
    _current: CurrentGuard,
    #[cfg(feature = "otel")]
    _otel: Option<opentelemetry::ContextGuard>,
}

impl std::fmt::Debug for Entered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").finish_non_exhaustive()
    }
}

impl TracedRequest {
    /// Makes this request [`current`](crate::current) until the guard drops: hold it while
    /// calling and polling the inner service, so that its logs and outgoing calls carry the
    /// trace.
    #[inline(always)]
    pub fn enter(&self) -> Entered<'_> {
        let ctx = &self.finisher.ctx;
        Entered {
            _span: self.finisher.span.as_ref().map(|s| s.enter()),
            _current: CurrentGuard::set(ctx),
            #[cfg(feature = "otel")]
            _otel: ctx.otel.as_ref().map(|o| o.cx.clone().attach()),
        }
    }

    /// The request's context: ids, sampling, `tracestate` and `baggage`.
    pub fn context(&self) -> &RequestContext {
        &self.finisher.ctx
    }

    /// The inner service answered `resp`: it gets the request id (and `traceresponse` when
    /// asked for), and the server span ends when its body ends.
    #[inline]
    pub fn respond<B>(self, resp: Response<B>) -> Response<TraceBody<B>> {
        let (mut head, body) = resp.into_parts();
        let body = self.respond_parts(&mut head, body);
        Response::from_parts(head, body)
    }

    /// The trace id when this request's spans are recorded, `None` when it is not sampled:
    /// what the [`TraceContext`](garrison_core::TraceContext) this puts in the request's
    /// extensions gives an exemplar, for a stack that hands it on directly.
    #[inline]
    pub fn recorded_trace_id(&self) -> Option<garrison_core::TraceId> {
        let ctx = &self.finisher.ctx;
        ctx.is_recording().then_some(ctx.trace_id)
    }

    /// How many headers [`respond_parts`](Self::respond_parts) adds to the response: the
    /// request id, and `traceresponse` when it is on. A stack that adds its own headers
    /// first can make room for these in the same growth of the map.
    #[inline]
    pub fn response_headers(&self) -> usize {
        1 + usize::from(self.trace_response)
    }

    /// [`respond`](Self::respond) for a response taken apart: `head` gets the headers, and
    /// the span ends when `body` ends. A stack that changes several parts of a response puts
    /// it together once instead of once per part.
    #[inline]
    pub fn respond_parts<B>(self, head: &mut http::response::Parts, body: B) -> TraceBody<B> {
        let Self {
            mut finisher,
            request_id,
            trace_response,
        } = self;
        finisher.status = head.status.as_u16();
        if let Some(c) = head.extensions.get::<garrison_core::Caught>() {
            finisher.caught_cold(c);
        }
        let ctx = &finisher.ctx;
        let h = &mut head.headers;
        h.insert(request_id, ctx.request_id.to_header_value());
        if trace_response {
            let tp = format_traceparent(ctx.trace_id, ctx.span_id, ctx.sampled);
            if let Ok(v) = HeaderValue::from_bytes(&tp) {
                h.insert(TRACERESPONSE.clone(), v);
            }
        }
        let needs_end = finisher.needs_end();
        TraceBody {
            inner: body,
            finisher: needs_end.then_some(finisher),
        }
    }

    /// The inner service failed with an error instead of a response: the span ends as an
    /// error (`service_error`).
    pub fn failed(self) {
        let mut finisher = self.finisher;
        finisher.status = 500;
        finisher.finish(Some("service_error"));
    }
}

pin_project! {
    /// The response future of [`TraceService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<TracedRequest>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TraceBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let traced = this.state.as_ref().expect("polled after completion");
        let result = {
            let _entered = traced.enter();
            match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            }
        };
        let traced = this.state.take().expect("present");
        Poll::Ready(match result {
            Ok(resp) => Ok(traced.respond(resp)),
            Err(e) => {
                traced.failed();
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body of [`TraceService`]: the inner body, ending the server span when it
    /// ends.
    pub struct TraceBody<B> {
        #[pin]
        inner: B,
        finisher: Option<Finisher>,
    }
}

impl<B> TraceBody<B> {
    /// `inner`, traced by nothing: the body of a stack whose tracing is turned off.
    pub fn untraced(inner: B) -> Self {
        Self {
            inner,
            finisher: None,
        }
    }
}

impl<B> std::fmt::Debug for TraceBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TraceBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(mut f) = this.finisher.take() {
                    f.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut f) = this.finisher.take() {
                    f.finish(Some("body_error"));
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_names_are_interned_once_per_name() {
        let a = interned(HeaderName::try_from("X-Correlation-Id").unwrap());
        let b = interned(HeaderName::try_from("x-correlation-id").unwrap());
        let c = interned(HeaderName::from_static("x-request-id"));
        assert!(std::ptr::eq(a, b));
        assert!(!std::ptr::eq(a, c));
        assert_eq!(*a, "x-correlation-id");
        assert_eq!(*c, "x-request-id");
    }
}
