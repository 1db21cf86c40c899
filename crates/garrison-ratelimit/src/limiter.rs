//! The rate limiter: policies, their stores and their counters, usable without HTTP.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use garrison_core::{SharedClock, Tick};
use garrison_metrics::{Collector, MetricType, MetricWriter};

use crate::gcra::Decision;
use crate::headers::PolicyHeaders;
use crate::key::KeyHasher;
use crate::policy::Quota;
use crate::store::memory::MemoryStore;
use crate::store::{Answer, Ask, Nanos, Store};
use crate::{ClientKey, Policy};

/// What a decision was, for the `garrison_ratelimit_decisions_total` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed = 0,
    Limited = 1,
    Exempt = 2,
    Unavailable = 3,
}

const OUTCOMES: [(&str, Outcome); 4] = [
    ("allowed", Outcome::Allowed),
    ("limited", Outcome::Limited),
    ("exempt", Outcome::Exempt),
    ("unavailable", Outcome::Unavailable),
];

/// Decisions by outcome, counted per thread shard: every request counts one, on every core.
type Counters = garrison_core::ShardedCounters<4>;

#[derive(Debug)]
pub(crate) struct PolicyState {
    pub(crate) policy: Policy,
    quota: Quota,
    pub(crate) headers: &'static PolicyHeaders,
    counters: Counters,
    /// The overflow bucket's share of the decisions over the last sweep interval (`f64`
    /// bits), and the counts it was measured from.
    overflow_share: AtomicU64,
    overflow_seen: Mutex<(u64, u64)>,
}

/// The overflow buckets' share of a policy's decisions over a sweep interval above which the
/// limiter warns: clients are then keyed together, not one by one.
pub const OVERFLOW_WARN_SHARE: f64 = 0.01;

/// Enforces a set of named [`Policy`]s for [`ClientKey`]s.
///
/// [`RateLimitLayer`](crate::RateLimitLayer) builds one and uses it for every request; you can
/// also ask it directly, e.g. to limit jobs or messages rather than HTTP requests:
///
/// ```
/// use garrison_ratelimit::{ClientKey, Policy, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::per_minute("jobs", 2))
///     .build()
///     .unwrap();
/// let limiter = layer.limiter();
/// let key = ClientKey(42);
/// assert!(limiter.check("jobs", key).unwrap().is_allowed());
/// assert!(limiter.check("jobs", key).unwrap().is_allowed());
/// let refused = limiter.check("jobs", key).unwrap();
/// assert!(!refused.is_allowed());
/// assert_eq!(refused.retry_after_secs(), 30);
/// ```
pub struct RateLimiter {
    pub(crate) policies: Box<[PolicyState]>,
    /// Every policy's keys in this process: the store, or the fallback of a shared one.
    memory: MemoryStore,
    /// The store every replica shares, when there is one.
    shared: Option<Box<dyn Store>>,
    nanos: Nanos,
    pub(crate) hasher: KeyHasher,
    #[cfg(feature = "redis")]
    redis: Option<Arc<crate::RedisStore>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field(
                "policies",
                &self.policies.iter().map(|p| &p.policy).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub(crate) fn new(
        policies: Vec<Policy>,
        clock: SharedClock,
        hasher: KeyHasher,
        max_keys: usize,
        overflow_factor: u32,
        sweep_every: Duration,
    ) -> Self {
        let sweep_ns = u64::try_from(sweep_every.as_nanos()).unwrap_or(u64::MAX);
        let quotas: Vec<Quota> = policies.iter().map(Policy::quota).collect();
        Self {
            memory: MemoryStore::new(&quotas, max_keys, overflow_factor, sweep_ns),
            policies: policies
                .into_iter()
                .map(|p| PolicyState {
                    quota: p.quota(),
                    headers: PolicyHeaders::new(&p),
                    counters: Counters::default(),
                    overflow_share: AtomicU64::new(0),
                    overflow_seen: Mutex::new((0, 0)),
                    policy: p,
                })
                .collect(),
            shared: None,
            nanos: Nanos::new(clock),
            hasher,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Decides policies in `store`, which every replica shares, rather than in memory
    /// (memory stays the store's fallback).
    #[cfg(feature = "redis")]
    pub(crate) fn share(&mut self, store: crate::RedisStore) {
        let store = Arc::new(store);
        self.redis = Some(store.clone());
        self.shared = Some(Box::new(store));
    }

    /// Nanoseconds on the limiter's clock (never 0, so that 0 can mean "no state").
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos.now()
    }

    /// `t`, a tick of the limiter's clock, in the nanoseconds of [`now`](Self::now).
    #[inline]
    pub(crate) fn nanos_at(&self, t: Tick) -> u64 {
        self.nanos.at(t)
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &SharedClock {
        self.nanos.clock()
    }

    /// One request of `key` under policy `policy` (counting every request in one bucket when
    /// `global`) at `now`, asked of the shared store when there is one, else of memory.
    #[inline]
    pub(crate) fn decide(&self, policy: usize, key: ClientKey, global: bool, now: u64) -> Answer {
        let ask = self.ask(policy, key, global, now);
        match &self.shared {
            None => Answer::Decided(self.memory.check(&ask)),
            Some(store) => store.decide(ask, &self.nanos),
        }
    }

    /// [`decide`](Self::decide) in this process's memory, now: for a shared store that
    /// cannot be reached.
    pub(crate) fn decide_in_memory(&self, policy: usize, key: ClientKey, global: bool) -> Decision {
        self.memory
            .check(&self.ask(policy, key, global, self.now()))
    }

    /// One request of `key` under policy `policy` at `now`, as a store is asked it.
    #[inline]
    fn ask(&self, policy: usize, key: ClientKey, global: bool, now: u64) -> Ask<'_> {
        let p = &self.policies[policy];
        Ask {
            policy,
            name: p.policy.name(),
            quota: &p.quota,
            key,
            global,
            now,
        }
    }

    /// The index of the policy named `name`.
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.policy.name() == name)
    }

    /// The policies, in the order they were added.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| &p.policy)
    }

    /// One request of `key` under the policy `policy`, in this process's memory (a Redis
    /// store, when configured, is not asked). `None` when there is no such policy.
    pub fn check(&self, policy: &str, key: ClientKey) -> Option<Decision> {
        let i = self.index(policy)?;
        let d = self.memory.table(i).check(key, self.now());
        self.count(i, outcome(&d));
        Some(d)
    }

    /// Drops the keys that are idle now and gives their memory back; returns how many went.
    /// A background task does this every sweep interval while a tokio runtime runs the layer.
    ///
    /// Each sweep also measures the share of each policy's decisions that its overflow
    /// buckets made since the last one ([`overflow_share`](Self::overflow_share)), and warns
    /// in the log when it is above [`OVERFLOW_WARN_SHARE`].
    pub fn sweep(&self) -> usize {
        let now = self.now();
        for (p, table) in self.policies.iter().zip(self.memory.tables()) {
            let decisions = p.counters.get(Outcome::Allowed as usize)
                + p.counters.get(Outcome::Limited as usize);
            let overflowed = table.overflowed();
            let mut seen = p.overflow_seen.lock();
            let (d, o) = (
                decisions - seen.0.min(decisions),
                overflowed - seen.1.min(overflowed),
            );
            *seen = (decisions, overflowed);
            let share = if d == 0 {
                0.0
            } else {
                (o as f64 / d as f64).min(1.0)
            };
            p.overflow_share.store(share.to_bits(), Ordering::Relaxed);
            if share > OVERFLOW_WARN_SHARE {
                tracing::warn!(
                    policy = p.policy.name(),
                    share = format_args!("{:.1}%", share * 100.0),
                    tracked_keys = self.tracked_keys(),
                    "rate limit: more clients are active than max_keys holds; new clients share overflow buckets (raise [ratelimit] max_keys)"
                );
            }
        }
        self.memory.tables().map(|t| t.sweep(now)).sum()
    }

    /// The share of `policy`'s decisions its overflow buckets made over the last sweep
    /// interval: new clients that found every key of the table active, keyed together.
    pub fn overflow_share(&self, policy: &str) -> Option<f64> {
        let p = &self.policies[self.index(policy)?];
        Some(f64::from_bits(p.overflow_share.load(Ordering::Relaxed)))
    }

    /// Whether any policy's overflow buckets made more than [`OVERFLOW_WARN_SHARE`] of its
    /// decisions over the last sweep interval. The rate limiter's health check warns then.
    pub fn is_overflowing(&self) -> bool {
        self.policies
            .iter()
            .any(|p| f64::from_bits(p.overflow_share.load(Ordering::Relaxed)) > OVERFLOW_WARN_SHARE)
    }

    /// Keys tracked in memory, over all policies.
    pub fn tracked_keys(&self) -> usize {
        self.memory.tables().map(|t| t.len()).sum()
    }

    /// Bytes the in-memory tables hold now.
    pub fn memory_bytes(&self) -> usize {
        self.memory.tables().map(|t| t.memory_bytes()).sum()
    }

    /// The Redis store, when one is configured: its availability (for health checks) and
    /// its counters.
    #[cfg(feature = "redis")]
    pub fn redis_store(&self) -> Option<&Arc<crate::RedisStore>> {
        self.redis.as_ref()
    }

    /// Decisions so far for `policy`: `(allowed, limited, exempt)`.
    pub fn decisions(&self, policy: &str) -> Option<(u64, u64, u64)> {
        let c = &self.policies[self.index(policy)?].counters;
        let get = |o: Outcome| c.get(o as usize);
        Some((
            get(Outcome::Allowed),
            get(Outcome::Limited),
            get(Outcome::Exempt),
        ))
    }

    #[inline]
    pub(crate) fn count(&self, policy: usize, o: Outcome) {
        self.policies[policy].counters.add(o as usize);
    }
}

#[inline]
pub(crate) fn outcome(d: &Decision) -> Outcome {
    if d.allowed {
        Outcome::Allowed
    } else {
        Outcome::Limited
    }
}

impl Collector for RateLimiter {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        w.family(
            "garrison_ratelimit_decisions",
            MetricType::Counter,
            "Rate-limit decisions by policy: allowed, limited, exempt, or unavailable (the shared store could not be reached and the limiter fails closed).",
        );
        for p in self.policies.iter() {
            for (name, o) in OUTCOMES {
                w.sample_u64(
                    "garrison_ratelimit_decisions",
                    &[("policy", p.policy.name()), ("decision", name)],
                    p.counters.get(o as usize),
                );
            }
        }
        w.family(
            "garrison_ratelimit_tracked_keys",
            MetricType::Gauge,
            "Client keys the in-memory store tracks, by policy.",
        );
        for (p, table) in self.policies.iter().zip(self.memory.tables()) {
            w.sample_u64(
                "garrison_ratelimit_tracked_keys",
                &[("policy", p.policy.name())],
                table.len() as u64,
            );
        }
        w.family(
            "garrison_ratelimit_overflow",
            MetricType::Counter,
            "Requests of new keys counted in a shared overflow bucket because the key table was full.",
        );
        for (p, table) in self.policies.iter().zip(self.memory.tables()) {
            w.sample_u64(
                "garrison_ratelimit_overflow",
                &[("policy", p.policy.name())],
                table.overflowed(),
            );
        }
        w.family(
            "garrison_ratelimit_overflow_share",
            MetricType::Gauge,
            "The share of a policy's decisions made by overflow buckets over the last sweep interval.",
        );
        for p in self.policies.iter() {
            w.sample_f64(
                "garrison_ratelimit_overflow_share",
                &[("policy", p.policy.name())],
                f64::from_bits(p.overflow_share.load(Ordering::Relaxed)),
            );
        }
        if let Some(store) = &self.shared {
            store.collect(w);
        }
    }
}

/// Registers `limiter`'s metrics in `registry`.
pub(crate) fn register(limiter: &Arc<RateLimiter>, registry: &garrison_metrics::MetricsRegistry) {
    registry.register_collector(limiter.clone());
}
