//! [`RateLimitBuilder`]: policies, routes, keys and the store, checked into a layer.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use garrison_core::{RouteResolver, SharedClock, TrustedProxies};
use garrison_metrics::MetricsRegistry;

use super::decision::{Rule, Shared};
use super::RateLimitLayer;
use crate::key::KeyHasher;
use crate::limiter::{register, RateLimiter};
use crate::{HeaderSet, KeySource, Policy, PolicyError};

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
    log_refusals: bool,
    #[cfg(feature = "redis")]
    redis: Option<crate::RedisStore>,
}

/// The default bound on tracked keys, over all policies.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// The default interval of the idle-key sweep.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

impl RateLimitBuilder {
    /// No policy yet, every option at its default.
    pub(super) fn new() -> Self {
        Self {
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
            log_refusals: false,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

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

    /// Logs refusals: a `WARN` event `rate limit refused a request` with the policy, at most
    /// one a second, counting the refusals since the previous one (default: off; the
    /// `garrison_ratelimit_decisions_total` counter counts every refusal either way).
    pub fn log_refusals(mut self, on: bool) -> Self {
        self.log_refusals = on;
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
        if let Some(store) = self.redis {
            limiter.share(store);
        }
        let limiter = Arc::new(limiter);
        if let Some(reg) = &self.metrics {
            register(&limiter, reg);
        }
        Ok(RateLimitLayer::new(Arc::new(Shared {
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
            refusal_log: self
                .log_refusals
                .then(|| garrison_core::LogEvery::new(Duration::from_secs(1))),
        })))
    }
}
