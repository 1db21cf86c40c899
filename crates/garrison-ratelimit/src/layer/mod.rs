//! The middleware: [`RateLimitLayer`], its builder, [`RateLimitService`] and its future.

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::RateLimitService;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use garrison_core::{RouteResolver, SharedClock, TrustedProxies};
use garrison_metrics::MetricsRegistry;
use http::{Request, Response, StatusCode};
use tower::Layer;

use crate::gcra::Decision;
use crate::key::KeyHasher;
use crate::limiter::{outcome, register, Outcome, RateLimiter};
use crate::{ClientKey, HeaderSet, KeySource, Policy, PolicyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Policy(usize),
    Exempt,
}

/// A rate-limit layer's configuration could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl From<PolicyError> for ConfigError {
    fn from(e: PolicyError) -> Self {
        ConfigError(e.to_string())
    }
}

/// Builds a [`RateLimitLayer`]; start with [`RateLimitLayer::builder`].
#[derive(Debug)]
#[must_use]
pub struct RateLimitBuilder {
    policies: Vec<Policy>,
    default: Option<String>,
    no_default: bool,
    routes: Vec<(String, Option<String>)>,
    key: KeySource,
    policy_keys: Vec<(String, KeySource)>,
    proxies: TrustedProxies,
    headers: HeaderSet,
    exempt: Vec<Vec<u8>>,
    resolver: RouteResolver,
    clock: SharedClock,
    max_keys: usize,
    overflow_factor: u32,
    sweep_every: Duration,
    ipv6_prefix: u8,
    seed: Option<u64>,
    metrics: Option<MetricsRegistry>,
    #[cfg(feature = "redis")]
    redis: Option<crate::RedisStore>,
}

/// The default bound on tracked keys, over all policies.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// The default interval of the idle-key sweep.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

impl RateLimitBuilder {
    /// Adds a policy. The first policy added is the default one (for routes no rule names)
    /// unless [`default_policy`](Self::default_policy) or
    /// [`no_default_policy`](Self::no_default_policy) says otherwise.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// The policy for routes that no rule names (and for requests that match no route).
    pub fn default_policy(mut self, name: &str) -> Self {
        self.default = Some(name.to_owned());
        self.no_default = false;
        self
    }

    /// Routes that no rule names are not limited.
    pub fn no_default_policy(mut self) -> Self {
        self.no_default = true;
        self.default = None;
        self
    }

    /// Limits the route `pattern` (axum's `MatchedPath` text, e.g. `/users/{id}`, or a pattern
    /// of the resolver's route table) by the policy `policy`.
    pub fn route(mut self, pattern: &str, policy: &str) -> Self {
        self.routes
            .push((pattern.to_owned(), Some(policy.to_owned())));
        self
    }

    /// The route `pattern` is not limited and gets no rate-limit headers.
    pub fn exempt_route(mut self, pattern: &str) -> Self {
        self.routes.push((pattern.to_owned(), None));
        self
    }

    /// Where client keys come from (default: [`KeySource::ClientIp`]).
    pub fn key(mut self, source: KeySource) -> Self {
        self.key = source;
        self
    }

    /// Keys requests of one policy differently from the others, e.g. uploads by API key.
    pub fn policy_key(mut self, policy: &str, source: KeySource) -> Self {
        self.policy_keys.push((policy.to_owned(), source));
        self
    }

    /// The proxies whose forwarding headers are believed (default: none).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Which headers responses carry (default: [`HeaderSet::ALL`]).
    pub fn headers(mut self, set: HeaderSet) -> Self {
        self.headers = set;
        self
    }

    /// Requests whose key value (the header value, or the identity bytes) is `value` pass
    /// untouched: not counted against a limit and given no headers, e.g. an admin identity.
    pub fn exempt_key(mut self, value: impl AsRef<[u8]>) -> Self {
        self.exempt.push(value.as_ref().to_vec());
        self
    }

    /// How route labels are found (default: axum's `MatchedPath`).
    pub fn route_resolver(mut self, resolver: RouteResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The clock (default: the system clock). Tests use tokio's paused clock or a manual one.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The most keys tracked in memory over all policies (default: [`DEFAULT_MAX_KEYS`]). A
    /// key costs at most [`BYTES_PER_KEY_MAX`](crate::BYTES_PER_KEY_MAX) bytes.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n.max(1);
        self
    }

    /// How many clients' worth an overflow bucket admits (default 1). When more clients are
    /// active than [`max_keys`](Self::max_keys) holds, the newcomers of one key-table shard
    /// share one bucket; with `n`, that bucket has `n` times the policy's rate and burst. More
    /// is kinder to a crowd of honest clients, and lets a flood of keys get more through.
    pub fn overflow_factor(mut self, n: u32) -> Self {
        self.overflow_factor = n.max(1);
        self
    }

    /// How often idle keys are dropped (default: [`DEFAULT_SWEEP_INTERVAL`]).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_every = every;
        self
    }

    /// The prefix length IPv6 clients are keyed by (default: 64; 128 keys single addresses).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The seed of the key hash (default: random per process, or the Redis store's secret).
    pub fn key_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Registers the limiter's metrics in `registry`.
    pub fn metrics(mut self, registry: &MetricsRegistry) -> Self {
        self.metrics = Some(registry.clone());
        self
    }

    /// Shares the limits of every replica through Redis (see [`RedisStore`](crate::RedisStore)).
    #[cfg(feature = "redis")]
    pub fn store(mut self, store: crate::RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if self.policies.is_empty() {
            return Err(ConfigError("rate limit: no policy is configured".into()));
        }
        for (i, p) in self.policies.iter().enumerate() {
            p.validate()?;
            if self.policies[..i].iter().any(|q| q.name() == p.name()) {
                return Err(ConfigError(format!(
                    "rate limit: policy `{}` is defined twice",
                    p.name()
                )));
            }
        }
        let index = |name: &str, what: &str| {
            self.policies
                .iter()
                .position(|p| p.name() == name)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "rate limit: {what} names the unknown policy `{name}` (known: {})",
                        self.policies
                            .iter()
                            .map(Policy::name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        };
        let default = if self.no_default {
            None
        } else {
            match &self.default {
                Some(d) => Some(index(d, "the default policy")?),
                None => Some(0),
            }
        };
        let mut routes = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for (pattern, policy) in &self.routes {
            let rule = match policy {
                Some(p) => Rule::Policy(index(p, &format!("route `{pattern}`"))?),
                None => Rule::Exempt,
            };
            if routes
                .insert(pattern.clone().into_boxed_str(), rule)
                .is_some()
            {
                return Err(ConfigError(format!(
                    "rate limit: route `{pattern}` has two rules"
                )));
            }
        }
        let mut sources = vec![self.key.clone(); self.policies.len()];
        for (p, s) in &self.policy_keys {
            sources[index(p, "a key rule")?] = s.clone();
        }
        #[cfg(feature = "redis")]
        let redis_seed = self.redis.as_ref().map(|r| r.key_secret_value());
        #[cfg(not(feature = "redis"))]
        let redis_seed: Option<u64> = None;
        let seed = self
            .seed
            .or(redis_seed)
            .unwrap_or_else(|| foldhash::fast::RandomState::default().hash_one(0xfeed_u64));
        let hasher = KeyHasher::new(seed, self.ipv6_prefix);
        let mut exempt: Vec<u64> = Vec::new();
        for v in &self.exempt {
            for s in &sources {
                exempt.push(hasher.value_key(s, v).0);
            }
        }
        exempt.sort_unstable();
        exempt.dedup();
        #[allow(unused_mut)]
        let mut limiter = RateLimiter::new(
            self.policies,
            self.clock,
            hasher,
            self.max_keys,
            self.overflow_factor,
            self.sweep_every,
        );
        #[cfg(feature = "redis")]
        {
            limiter.redis = self.redis.map(Arc::new);
        }
        let limiter = Arc::new(limiter);
        if let Some(reg) = &self.metrics {
            register(&limiter, reg);
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                global: sources
                    .iter()
                    .map(|s| matches!(s, KeySource::Global))
                    .collect(),
                sources,
                routes,
                default,
                resolver: self.resolver,
                proxies: self.proxies,
                headers: self.headers,
                exempt,
                sweep_every: self.sweep_every,
                sweeper: AtomicBool::new(false),
            }),
        })
    }
}

use std::hash::BuildHasher as _;

/// Limits requests per client and per route with GCRA, and tells clients where they stand.
///
/// Each request is matched to a policy by its route label (axum's `MatchedPath`, or the
/// resolver's route table; requests that match no route fall under the default policy), and
/// to a client key by the policy's [`KeySource`]. An allowed request goes on to the inner
/// service and its response gets the rate-limit headers ([`HeaderSet`]); a refused one is
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
    /// A builder with no policy yet.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            policies: Vec::new(),
            default: None,
            no_default: false,
            routes: Vec::new(),
            key: KeySource::ClientIp,
            policy_keys: Vec::new(),
            proxies: TrustedProxies::none(),
            headers: HeaderSet::ALL,
            exempt: Vec::new(),
            resolver: RouteResolver::new(),
            clock: SharedClock::system(),
            max_keys: DEFAULT_MAX_KEYS,
            overflow_factor: 1,
            sweep_every: DEFAULT_SWEEP_INTERVAL,
            ipv6_prefix: 64,
            seed: None,
            metrics: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
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

    /// [`check`](Self::check) for a request whose route label `route` the caller has
    /// resolved already, with the layer's resolver: a stack that runs several parts resolves
    /// the route once.
    #[inline]
    pub fn check_route<B>(&self, req: &Request<B>, route: &str) -> Verdict {
        self.shared.decide(req, Some(route), None)
    }

    /// [`check_route`](Self::check_route) at `now`, a tick the caller has just read from
    /// the [limiter's clock](RateLimiter::clock): a stack that asks several parts reads the
    /// clock once. (A shared Redis store keeps its own time.)
    #[inline]
    pub fn check_route_at<B>(
        &self,
        req: &Request<B>,
        route: &str,
        now: garrison_core::Tick,
    ) -> Verdict {
        self.shared.decide(req, Some(route), Some(now))
    }

    /// The key `req` is counted under by `policy` (for logs and tests; the key is a hash).
    pub fn key_of<B>(&self, policy: &str, req: &Request<B>) -> Option<ClientKey> {
        let s = &self.shared;
        let i = s.limiter.index(policy)?;
        Some(s.limiter.hasher.key(&s.sources[i], &s.proxies, req))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.shared.clone())
    }
}

pub(crate) struct Shared {
    pub(crate) limiter: Arc<RateLimiter>,
    sources: Vec<KeySource>,
    global: Vec<bool>,
    routes: HashMap<Box<str>, Rule, foldhash::fast::RandomState>,
    default: Option<usize>,
    resolver: RouteResolver,
    proxies: TrustedProxies,
    pub(crate) headers: HeaderSet,
    exempt: Vec<u64>,
    sweep_every: Duration,
    sweeper: AtomicBool,
}

/// What the rate limiter decides for one request: see [`RateLimitLayer::check`].
#[derive(Debug)]
pub enum Verdict {
    /// Not limited: no policy applies, or the route or the key is exempt.
    Pass,
    /// Allowed under its policy: [`Allowance::apply`] puts the policy's headers on the
    /// response.
    Allowed(Allowance),
    /// Refused: the answer to send (`429` with `Retry-After` and the policy's headers, or
    /// `503` when the shared store cannot be reached and the limiter fails closed).
    Refused(Response<Bytes>),
    /// The shared store must answer first: await the [`PendingVerdict`].
    Pending(PendingVerdict),
}

/// What the response of an allowed request is told: the policy's headers with the
/// remaining quota.
#[derive(Clone, Copy, Debug)]
pub struct Allowance {
    headers: &'static crate::headers::PolicyHeaders,
    set: HeaderSet,
    remaining: u32,
    reset_secs: u64,
}

impl Allowance {
    /// Adds the configured rate-limit headers (`RateLimit-Policy`, `RateLimit`,
    /// `X-RateLimit-*`) to a response's `headers`.
    ///
    /// `headers` is left with room for two more, so that it grows once at most: the
    /// `content-length` that axum's router sets after every layer, and a request id.
    #[inline]
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        self.apply_with_room(headers, 2);
    }

    /// [`apply`](Self::apply), leaving room in `headers` for `room` more headers that are
    /// added next, so that the map grows once, here, if it must grow at all.
    #[inline]
    pub fn apply_with_room(&self, headers: &mut http::HeaderMap, room: usize) {
        self.headers
            .apply(self.set, self.remaining, self.reset_secs, headers, room);
    }

    /// Requests left in the client's quota after this one.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
}

#[cfg(feature = "redis")]
type Remote = crate::store::redis::Pending;
#[cfg(not(feature = "redis"))]
type Remote = std::convert::Infallible;

/// A verdict that waits for the shared store (Redis): a future of the [`Verdict`], never
/// [`Verdict::Pending`] again. Without the `redis` feature no value of it exists.
pub struct PendingVerdict {
    remote: Remote,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    shared: Arc<Shared>,
}

impl PendingVerdict {
    #[cfg(feature = "redis")]
    pub(crate) fn new(remote: Remote, shared: Arc<Shared>) -> Self {
        Self { remote, shared }
    }
}

impl fmt::Debug for PendingVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingVerdict").finish_non_exhaustive()
    }
}

impl std::future::Future for PendingVerdict {
    type Output = Verdict;

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Verdict> {
        let this = self.get_mut();
        #[cfg(feature = "redis")]
        return this.remote.poll(cx, &this.shared);
        #[cfg(not(feature = "redis"))]
        match this.remote {}
    }
}

impl Shared {
    #[inline]
    pub(crate) fn decide<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        route: Option<&str>,
        at: Option<garrison_core::Tick>,
    ) -> Verdict {
        self.start_sweeper();
        let rule = if self.routes.is_empty() {
            self.default.map(Rule::Policy)
        } else {
            let label = route.unwrap_or_else(|| self.resolver.resolve(req).as_str());
            match self.routes.get(label) {
                Some(r) => Some(*r),
                None => self.default.map(Rule::Policy),
            }
        };
        let Some(Rule::Policy(i)) = rule else {
            return Verdict::Pass;
        };
        let limiter = &*self.limiter;
        let global = self.global[i];
        let key = if global {
            limiter.hasher.global()
        } else {
            limiter.hasher.key(&self.sources[i], &self.proxies, req)
        };
        if !self.exempt.is_empty() && self.exempt.binary_search(&key.0).is_ok() {
            limiter.count(i, Outcome::Exempt);
            return Verdict::Pass;
        }
        #[cfg(feature = "redis")]
        if let Some(store) = &limiter.redis {
            return crate::store::redis::decide(store, &self.limiter, i, key, self);
        }
        let table = &limiter.policies[i].table;
        let now = match at {
            Some(t) => limiter.nanos_at(t),
            None => limiter.now(),
        };
        let d = if global {
            table.check_global(now)
        } else {
            table.check(key, now)
        };
        self.verdict(i, d)
    }

    /// The verdict for decision `d` of policy `i`, counted.
    #[inline]
    pub(crate) fn verdict(&self, i: usize, d: Decision) -> Verdict {
        self.limiter.count(i, outcome(&d));
        let p = &self.limiter.policies[i];
        if d.allowed {
            Verdict::Allowed(Allowance {
                headers: p.headers,
                set: self.headers,
                remaining: d.remaining,
                reset_secs: d.reset_secs(),
            })
        } else {
            Verdict::Refused(self.refusal(i, &d))
        }
    }

    /// The `429` for decision `d` of policy `i`.
    fn refusal(&self, i: usize, d: &Decision) -> Response<Bytes> {
        let p = &self.limiter.policies[i];
        let secs = d.retry_after_secs().max(1);
        let mut body = String::with_capacity(96);
        body.push_str("{\"error\":\"rate_limited\",\"policy\":");
        garrison_core::push_json_string(&mut body, p.policy.name());
        body.push_str(",\"retry_after_seconds\":");
        body.push_str(itoa::Buffer::new().format(secs));
        body.push('}');
        let mut resp =
            garrison_core::refusal(StatusCode::TOO_MANY_REQUESTS, secs, Bytes::from(body));
        let h = resp.headers_mut();
        p.headers.apply_decision(self.headers, d, h);
        resp
    }

    /// The answer when the shared store cannot be reached and the limiter fails closed.
    #[cfg(feature = "redis")]
    pub(crate) fn unavailable(&self, i: usize, retry: Duration) -> Response<Bytes> {
        self.limiter.count(i, Outcome::Unavailable);
        garrison_core::refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            retry.as_secs(),
            Bytes::from_static(b"{\"error\":\"rate_limit_unavailable\"}"),
        )
    }

    /// Starts the idle-key sweep once, on the runtime that runs the first request.
    #[inline]
    fn start_sweeper(&self) {
        if self.sweeper.load(Ordering::Relaxed) || self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: sweeps still happen as tables grow.
            return;
        };
        let limiter: Weak<RateLimiter> = Arc::downgrade(&self.limiter);
        let every = self.sweep_every.max(Duration::from_millis(10));
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(l) = limiter.upgrade() else { break };
                l.sweep();
            }
        });
    }
}
