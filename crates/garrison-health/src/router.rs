//! The health routes as an axum `Router` to merge.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{HealthRegistry, Probe};

impl HealthRegistry {
    /// The three routes (`/health/live`, `/health/ready`, `/health` unless
    /// [`paths`](crate::HealthRegistryBuilder::paths) says otherwise) as a router to
    /// [`merge`](Router::merge) into the application's.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use garrison_health::HealthRegistry;
    ///
    /// let health = HealthRegistry::new();
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .merge(health.router());
    /// # let _ = app;
    /// ```
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let p = &self.inner.config.paths;
        Router::new()
            .route(&p.live, get(live))
            .route(&p.ready, get(ready))
            .route(&p.deep, get(deep))
            .with_state(self.clone())
    }
}

fn answer(h: &HealthRegistry, probe: Probe, req: &Request) -> Response {
    h.respond_to(probe, req)
        .map(axum::body::Body::from)
        .into_response()
}

async fn live(State(h): State<HealthRegistry>, req: Request) -> Response {
    answer(&h, Probe::Live, &req)
}

async fn ready(State(h): State<HealthRegistry>, req: Request) -> Response {
    answer(&h, Probe::Ready, &req)
}

async fn deep(State(h): State<HealthRegistry>, req: Request) -> Response {
    answer(&h, Probe::Deep, &req)
}
