//! [`GarrisonLayer`]: every part of the stack as one tower layer, in the order of the design.

mod toggle;

use std::task::{Context, Poll};

use garrison_admission::AdmissionLayer;
use garrison_breaker::CircuitBreakerLayer;
use garrison_health::HealthLayer;
use garrison_metrics::{MetricsLayer, ScrapeLayer};
use garrison_ratelimit::RateLimitLayer;
use garrison_trace::TraceLayer;
use http::Request;
use tower::{Layer, Service};

pub use toggle::{Toggled, ToggledBody, ToggledFuture};

/// Every part of the stack, outermost first; `None` is a part turned off.
#[derive(Clone, Default)]
pub(crate) struct Parts {
    pub(crate) trace: Option<TraceLayer>,
    pub(crate) metrics: Option<MetricsLayer>,
    pub(crate) health: Option<HealthLayer>,
    pub(crate) scrape: Option<ScrapeLayer>,
    pub(crate) ratelimit: Option<RateLimitLayer>,
    pub(crate) admission: Option<AdmissionLayer>,
    pub(crate) breaker: Option<CircuitBreakerLayer>,
}

/// The whole stack as one tower [`Layer`], made by [`Garrison::layer`](crate::Garrison::layer):
///
/// 1. trace — joins the caller's trace, opens the server span, sets the request id;
/// 2. metrics — measures what the client sees, 429s and 503s included, with exemplars;
/// 3. health routes and `/metrics` — answered here, never rate limited or broken;
/// 4. rate limit — refuses before any work is done;
/// 5. admission — at most N requests in the service, the rest queued by priority or shed
///    (`[admission]`, off by default);
/// 6. circuit breaker — guards your service, counting only its outcomes;
/// 7. your service.
///
/// Parts turned off in the configuration are not in the path of a request at all.
#[derive(Clone)]
pub struct GarrisonLayer {
    pub(crate) parts: Parts,
}

impl std::fmt::Debug for GarrisonLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.parts;
        f.debug_struct("GarrisonLayer")
            .field("trace", &p.trace.is_some())
            .field("metrics", &p.metrics.is_some())
            .field("health", &p.health.is_some())
            .field("scrape", &p.scrape.is_some())
            .field("ratelimit", &p.ratelimit.is_some())
            .field("admission", &p.admission.is_some())
            .field("breaker", &p.breaker.is_some())
            .finish()
    }
}

type On<L, S> = Toggled<<L as Layer<S>>::Service, S>;
type Breaker<S> = On<CircuitBreakerLayer, S>;
type Admit<S> = On<AdmissionLayer, Breaker<S>>;
type Limit<S> = On<RateLimitLayer, Admit<S>>;
type Scrape<S> = On<ScrapeLayer, Limit<S>>;
type Health<S> = On<HealthLayer, Scrape<S>>;
type Metrics<S> = On<MetricsLayer, Health<S>>;
type Stack<S> = On<TraceLayer, Metrics<S>>;

impl<S> Layer<S> for GarrisonLayer {
    type Service = GarrisonService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let p = &self.parts;
        let s = Toggled::wrap(p.breaker.as_ref(), inner);
        let s = Toggled::wrap(p.admission.as_ref(), s);
        let s = Toggled::wrap(p.ratelimit.as_ref(), s);
        let s = Toggled::wrap(p.scrape.as_ref(), s);
        let s = Toggled::wrap(p.health.as_ref(), s);
        let s = Toggled::wrap(p.metrics.as_ref(), s);
        let s = Toggled::wrap(p.trace.as_ref(), s);
        GarrisonService { inner: s }
    }
}

/// The service made by [`GarrisonLayer`]: your service behind the whole stack.
#[derive(Clone)]
pub struct GarrisonService<S> {
    inner: Stack<S>,
}

impl<S> std::fmt::Debug for GarrisonService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarrisonService").finish_non_exhaustive()
    }
}

impl<S, ReqB> Service<Request<ReqB>> for GarrisonService<S>
where
    Stack<S>: Service<Request<ReqB>>,
{
    type Response = <Stack<S> as Service<Request<ReqB>>>::Response;
    type Error = <Stack<S> as Service<Request<ReqB>>>::Error;
    type Future = <Stack<S> as Service<Request<ReqB>>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.inner.call(req)
    }
}
