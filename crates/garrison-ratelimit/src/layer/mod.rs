//! The middleware: [`RateLimitLayer`], its builder, [`RateLimitService`] and its future.

mod builder;
mod decision;
mod future;
mod service;

pub use builder::{ConfigError, RateLimitBuilder, DEFAULT_MAX_KEYS, DEFAULT_SWEEP_INTERVAL};
pub use decision::{Allowance, PendingVerdict, Verdict};
pub use future::ResponseFuture;
pub use service::RateLimitService;

use std::fmt;
use std::sync::Arc;

use garrison_core::{Part, RequestInfo};
use http::Request;
use tower::Layer;

use crate::limiter::RateLimiter;
use crate::ClientKey;
use decision::Shared;

/// Limits requests per client and per route with GCRA, and tells clients where they stand.
///
/// Each request is matched to a policy by its route label (axum's `MatchedPath`, or the
/// resolver's route table; requests that match no route fall under the default policy), and
/// to a client key by the policy's [`KeySource`](crate::KeySource). An allowed request goes on to the inner
/// service and its response gets the rate-limit headers ([`HeaderSet`](crate::HeaderSet)); a refused one is
/// answered at once with `429 Too Many Requests`, `Retry-After` (whole seconds, rounded up),
/// `Cache-Control: no-store`, the same headers and a small JSON body, and the inner service
/// is not called.
///
/// The response body stays the inner service's: the `429` is made with `B: From<Bytes>`
/// (axum's `Body`, `Full<Bytes>`, `String`...), so axum need not box the body once more.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::{get, post}, Router};
/// use garrison_ratelimit::{Policy, RateLimitLayer};
///
/// let limits = RateLimitLayer::builder()
///     .policy(Policy::per_minute("general", 100))
///     .policy(Policy::new("auth", 5, Duration::from_secs(15 * 60)))
///     .route("/login", "auth")
///     .exempt_route("/health/live")
///     .build()
///     .expect("a valid rate-limit configuration");
///
/// let app: Router = Router::new()
///     .route("/login", post(|| async { "welcome" }))
///     .route("/items", get(|| async { "items" }))
///     .route("/health/live", get(|| async { "ok" }))
///     .layer(limits);
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.shared.limiter)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A builder with no policy yet.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::new()
    }

    /// The limiter behind the layer: its counters, tracked keys, sweep.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.shared.limiter
    }

    /// The verdict for `req`, counted, for a stack that runs the limiter itself rather than
    /// as a layer (the `garrison` umbrella's one service): pass, allowed with headers to add,
    /// refused with the answer to send, or waiting for the shared store.
    ///
    /// ```
    /// use garrison_ratelimit::{Policy, RateLimitLayer, Verdict};
    ///
    /// let limits = RateLimitLayer::builder()
    ///     .policy(Policy::per_minute("general", 1))
    ///     .build()
    ///     .unwrap();
    /// let req = || http::Request::get("/items").body(()).unwrap();
    /// let Verdict::Allowed(allowance) = limits.check(&req()) else { panic!() };
    /// let mut headers = http::HeaderMap::new();
    /// allowance.apply(&mut headers);
    /// assert_eq!(headers["x-ratelimit-remaining"], "0");
    /// assert!(matches!(limits.check(&req()), Verdict::Refused(r) if r.status() == 429));
    /// ```
    #[inline]
    pub fn check<B>(&self, req: &Request<B>) -> Verdict {
        self.shared.decide(req, None, None)
    }

    /// The key `req` is counted under by `policy` (for logs and tests; the key is a hash).
    pub fn key_of<B>(&self, policy: &str, req: &Request<B>) -> Option<ClientKey> {
        let s = &self.shared;
        let i = s.limiter.index(policy)?;
        Some(s.limiter.hasher.key(&s.sources[i], &s.proxies, req))
    }
}

/// The rate limiter as a part of a stack: [`check`](RateLimitLayer::check) with the route of
/// `info` (resolved with the layer's resolver) and its tick (read from the
/// [limiter's clock](RateLimiter::clock); a shared Redis store keeps its own time), when it
/// has one.
impl Part for RateLimitLayer {
    type Entry = Verdict;

    #[inline]
    fn enter<B>(&self, req: &Request<B>, info: &RequestInfo<'_>) -> Verdict {
        self.shared.decide(req, Some(info.route()), info.now())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.shared.clone())
    }
}
