//! [`TraceLayer`]: the server side. The layer and its options here; the request's trace is
//! opened in `start`, held by [`TracedRequest`] and finished by `finish` when the response
//! body ([`TraceBody`]) ends.

mod body;
mod finish;
mod future;
mod service;
mod start;
mod traced;

pub use body::TraceBody;
pub use future::ResponseFuture;
pub use service::TraceService;
pub use traced::{Entered, TracedRequest};

use start::start;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use garrison_core::RouteResolver;
use http::header::{HeaderName, HeaderValue};
use http::Request;
use tower::Layer;

use crate::redact::Redaction;
use crate::Tracer;

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
    /// Reads the user's identity from the request extensions, for `enduser.id`.
    enduser: Option<Enduser>,
}

/// Reads an identity your authentication layer put into the request extensions.
type Enduser = fn(&http::Extensions) -> Option<&[u8]>;

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
///   [`RequestContext`](crate::RequestContext) (ids, sampling, `tracestate` and `baggage` to pass on);
///   [`PropagateLayer`](crate::PropagateLayer) and [`json_logs`](crate::json_logs) read it.
///   A recorded request also gets garrison-core's [`TraceContext`](garrison_core::TraceContext) in its extensions, which
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
                enduser: None,
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

    /// Names the user of each request: the extension `T` (bytes such as a user id) that your
    /// authentication layer puts into the request before this layer runs, as the rate
    /// limiter's `KeySource::extension` reads it. It becomes the server span's `enduser.id`
    /// and the access log's `enduser_id` (at most 128 bytes, read as UTF-8). Default: off
    /// (an identity is personal data: turn it on where your logs and traces may hold it).
    ///
    /// ```
    /// #[derive(Clone)]
    /// struct UserId(String);
    /// impl AsRef<[u8]> for UserId {
    ///     fn as_ref(&self) -> &[u8] { self.0.as_bytes() }
    /// }
    /// let tracer = garrison_trace::Tracer::builder().build();
    /// let layer = garrison_trace::TraceLayer::new(&tracer).enduser_id::<UserId>();
    /// # let _ = layer;
    /// ```
    pub fn enduser_id<T>(self) -> Self
    where
        T: AsRef<[u8]> + Clone + Send + Sync + 'static,
    {
        fn get<T: AsRef<[u8]> + Send + Sync + 'static>(e: &http::Extensions) -> Option<&[u8]> {
            e.get::<T>().map(AsRef::as_ref)
        }
        self.edit(|s| s.enduser = Some(get::<T>))
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
