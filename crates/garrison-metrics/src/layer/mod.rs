//! The middleware: [`MetricsLayer`], [`MetricsService`], its response future and body.

mod body;
mod future;
mod guard;
mod service;

pub use body::MetricsBody;
pub use future::ResponseFuture;
pub use service::MetricsService;

use garrison_core::{RouteResolver, RouteTable};
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

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService::new(inner, self.registry.shared.clone(), self.resolver.clone())
    }
}
