//! The middleware: [`MetricsLayer`], [`MetricsService`], its response future and body.

mod body;
mod future;
mod guard;
mod service;

pub use body::MetricsBody;
pub use future::ResponseFuture;
pub use service::MetricsService;

use garrison_core::{Part, RequestInfo, RouteResolver, RouteTable};
use tower::Layer;

use crate::MetricsRegistry;

/// Records RED metrics for every request that passes through: rate, errors and duration per
/// method, route template and status code, plus body sizes and active requests.
///
/// - In axum, add it with `Router::layer` so that the route template comes from
///   `MatchedPath`; requests no route matched are labelled `unmatched`.
/// - In front of a plain hyper service, give it a [`RouteTable`].
///
/// The duration runs from the call until the response body has been sent (or dropped); a
/// request whose client goes away is recorded with `error_type="cancelled"`.
///
/// ```
/// use axum::{routing::get, Router};
/// use garrison_metrics::{MetricsLayer, MetricsRegistry};
///
/// let registry = MetricsRegistry::new();
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(MetricsLayer::new(&registry))
///     .route_service("/metrics", registry.exporter());
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct MetricsLayer {
    registry: MetricsRegistry,
    resolver: RouteResolver,
}

impl MetricsLayer {
    /// A layer that records into `registry`.
    pub fn new(registry: &MetricsRegistry) -> Self {
        Self {
            registry: registry.clone(),
            resolver: RouteResolver::new(),
        }
    }

    /// Labels requests that carry no axum `MatchedPath` by the patterns of `table`.
    pub fn route_table(mut self, table: RouteTable) -> Self {
        self.resolver = self.resolver.with_table(table);
        self
    }

    /// Uses this resolver for route labels (shared with other layers).
    pub fn route_resolver(mut self, resolver: RouteResolver) -> Self {
        self.resolver = resolver;
        self
    }
}

impl MetricsLayer {
    /// Starts measuring `req`, for a stack that runs the metrics itself rather than as a
    /// layer (the `garrison` umbrella's one service). Hand the inner service's response to
    /// [`MeasuredRequest::respond`]; a measurement dropped before that records the request as
    /// cancelled.
    ///
    /// ```
    /// use garrison_metrics::{MetricsLayer, MetricsRegistry};
    ///
    /// let registry = MetricsRegistry::new();
    /// let layer = MetricsLayer::new(&registry);
    /// let m = layer.start(&http::Request::get("/users/7").body(()).unwrap());
    /// let resp = m.respond(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()));
    /// drop(resp);
    /// let text = registry.render(garrison_metrics::Format::Prometheus);
    /// assert!(text.contains("http_server_request_duration_seconds_count"));
    /// ```
    #[inline]
    pub fn start<B>(&self, req: &http::Request<B>) -> MeasuredRequest {
        let route = self.resolver.resolve(req);
        self.enter(req, &RequestInfo::new(req, route.as_str()))
    }

    /// The clock the layer's registry reads.
    pub fn clock(&self) -> &garrison_core::SharedClock {
        self.registry.clock()
    }
}

/// One request being measured, from [`MetricsLayer::start`] until its response body ends.
#[derive(Debug)]
pub struct MeasuredRequest(guard::RequestGuard);

impl MeasuredRequest {
    /// The inner service answered `resp`: its status is recorded, and its body measured
    /// until it ends (or is dropped: `error_type="cancelled"`).
    #[inline]
    pub fn respond<B: http_body::Body>(
        self,
        resp: http::Response<B>,
    ) -> http::Response<MetricsBody<B>> {
        self.0.respond(resp)
    }

    /// [`respond`](Self::respond) for a response taken apart: the status is read from
    /// `head`, and `body` measured until it ends. A stack that changes several parts of a
    /// response puts it together once instead of once per part.
    #[inline]
    pub fn respond_parts<B: http_body::Body>(
        mut self,
        head: &http::response::Parts,
        body: B,
    ) -> MetricsBody<B> {
        self.0.note_caught(&head.extensions);
        self.0.respond_parts(head.status, body)
    }

    /// The inner service failed with an error instead of a response: recorded as a `500`
    /// with `error_type="service_error"`, so that error ratios and the SLO rules (which
    /// count 5xx) count it.
    pub fn failed(mut self) {
        self.0.service_failed();
    }
}

/// The metrics as a part of a stack: the measurement of a request under the route, method,
/// tick and trace of `info` (the tick must come from the registry's
/// [`clock`](crate::MetricsRegistry::clock); the exemplar's trace is the trace part's when it
/// ran, else the request's [`TraceContext`](garrison_core::TraceContext)).
impl Part for MetricsLayer {
    type Entry = MeasuredRequest;

    #[inline]
    fn enter<B>(&self, req: &http::Request<B>, info: &RequestInfo<'_>) -> MeasuredRequest {
        MeasuredRequest(service::start(&self.registry.shared, req, info))
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService::new(inner, self.registry.shared.clone(), self.resolver.clone())
    }
}
