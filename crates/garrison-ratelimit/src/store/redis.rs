//! The Redis store: one limit shared by every replica.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use garrison_metrics::{MetricType, MetricWriter};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::Decision;
use crate::layer::{PendingVerdict, Shared, Verdict};
use crate::limiter::RateLimiter;
use crate::ClientKey;

const SCRIPT: &str = include_str!("gcra.lua");

fn script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(SCRIPT))
}

/// What the limiter does while Redis cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Decide in this process's memory, with the same policies (the default): each replica
    /// then enforces the limit on its own, and no request fails because Redis did.
    #[default]
    Open,
    /// Refuse requests with `503 Service Unavailable` and `Retry-After`.
    Closed,
}

/// An invalid Redis store configuration.
#[derive(Debug)]
pub struct RedisStoreError(String);

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisStoreError {}

/// Keeps GCRA states in Redis, so that all replicas of a service share one limit.
///
/// Each decision runs one Lua script on the server (loaded once, then called by its SHA),
/// which reads the key's state, applies GCRA on the server's clock and stores the new state
/// with a TTL that ends when the key would be idle, so Redis frees idle keys by itself.
///
/// **Leases.** Asking Redis for every request costs a round trip each. With
/// [`lease_fraction`](Self::lease_fraction) (default 2 %), a replica that finds a key busy
/// takes up to that fraction of the burst in one call and spends it locally for at most the
/// time those requests represent at the policy's rate. Tokens are only ever taken from Redis,
/// so the shared limit holds; a replica can be ahead of the limit by at most one lease, and
/// leases that expire unspent cost at most one lease each. With `R` replicas the limit holds
/// within `R × fraction` of the burst (±4 % for two replicas at the default). Policies whose
/// burst is below `1 / fraction` (e.g. 5 logins per 15 minutes) always ask Redis for
/// allowed requests. A refusal from Redis is remembered until its `Retry-After` ends: no
/// replica can give tokens back, so refusing locally until then is exact, and a client
/// hammering a spent limit costs no round trips.
///
/// **Faults.** Each call is bounded by [`timeout`](Self::timeout) (default 50 ms). When
/// Redis errs or times out, decisions fall back to the memory store
/// ([`FailMode::Open`], the default) or are refused ([`FailMode::Closed`]), and are counted in
/// `garrison_ratelimit_store_fallbacks_total`; one request per
/// [`retry_interval`](Self::retry_interval) (default 1 s) tries Redis again, and the first
/// that succeeds brings every replica back to the shared limit.
///
/// ```no_run
/// use garrison_ratelimit::{Policy, RateLimitLayer, RedisStore};
///
/// let store = RedisStore::new("redis://127.0.0.1:6379")?
///     .key_prefix("shop:ratelimit")
///     .key_secret(0x5eed_2026);
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::per_minute("general", 100))
///     .store(store)
///     .build()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    retry_interval: Duration,
    fail: FailMode,
    prefix: Arc<str>,
    secret: u64,
    lease_fraction: f64,
    leases: Box<[Mutex<Leases>]>,
    max_leases: usize,
    available: AtomicBool,
    next_probe: AtomicU64,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
    lease_hits: AtomicU64,
    unavailable_since: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    tokens: u32,
    expires: u64,
    /// Redis refused until then: nobody can return tokens, so refusing locally is exact.
    denied_until: u64,
    remaining: u32,
    full_at: u64,
}

const LEASE_SHARDS: usize = 16;

/// Leases by (policy index, key).
type Leases = HashMap<(usize, u64), Lease>;

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("fail", &self.fail)
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://host:port/db`, `rediss://` for TLS when the
    /// redis crate is built with it). Nothing is connected until the first request, so a
    /// service starts even while Redis is down.
    pub fn new(url: &str) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            RedisStoreError(format!("rate limit: the Redis URL does not parse: {e}"))
        })?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            timeout: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            fail: FailMode::Open,
            prefix: "garrison:ratelimit".into(),
            secret: 0x6761_7272_6973_6f6e,
            lease_fraction: 0.02,
            leases: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
            max_leases: 65_536,
            available: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
            stats: Stats::default(),
        })
    }

    /// The longest a call to Redis may take before the fallback decides (default: 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often Redis is tried again while it is unavailable (default: 1 s).
    pub fn retry_interval(mut self, every: Duration) -> Self {
        self.retry_interval = every;
        self
    }

    /// What happens while Redis is unavailable (default: [`FailMode::Open`]).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail = mode;
        self
    }

    /// The prefix of the Redis keys (default: `garrison:ratelimit`); keys are
    /// `{prefix}:{policy}:{hash}`.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The seed of the key hash. Every replica must use the same one; set a secret value so
    /// that nobody can craft keys that collide with another client's.
    pub fn key_secret(mut self, secret: u64) -> Self {
        self.secret = secret;
        self
    }

    /// The share of a policy's burst one lease may take (default 0.02; 0 asks Redis for
    /// every request).
    pub fn lease_fraction(mut self, fraction: f64) -> Self {
        self.lease_fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    pub(crate) fn key_secret_value(&self) -> u64 {
        self.secret
    }

    /// Whether the last call to Redis succeeded. Health checks read this.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Calls that succeeded, calls that failed, decisions made by the fallback, and requests
    /// served from a lease, so far.
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let s = &self.stats;
        (
            s.ok.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
            s.fallbacks.load(Ordering::Relaxed),
            s.lease_hits.load(Ordering::Relaxed),
        )
    }

    fn batch(&self, burst: u32) -> u32 {
        ((f64::from(burst) * self.lease_fraction) as u32).max(1)
    }

    fn lease_shard(&self, key: (usize, u64)) -> &Mutex<Leases> {
        &self.leases[(key.1 >> 20) as usize % LEASE_SHARDS]
    }

    fn take_leased(&self, idx: usize, key: ClientKey, now: u64) -> Option<Decision> {
        let mut shard = self.lease_shard((idx, key.0)).lock();
        let lease = shard.get_mut(&(idx, key.0))?;
        if now < lease.denied_until {
            let d = Decision {
                allowed: false,
                remaining: 0,
                reset: lease.full_at.saturating_sub(now),
                retry_after: lease.denied_until - now,
            };
            self.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
            return Some(d);
        }
        if lease.tokens == 0 || now >= lease.expires {
            return None;
        }
        lease.tokens -= 1;
        let left = lease.tokens;
        let d = Decision {
            allowed: true,
            remaining: lease.remaining.saturating_add(left),
            reset: lease.full_at.saturating_sub(now),
            retry_after: 0,
        };
        if left == 0 {
            shard.remove(&(idx, key.0));
        }
        self.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    fn store_lease(&self, idx: usize, key: ClientKey, lease: Lease, now: u64) {
        let per_shard = self.max_leases / LEASE_SHARDS;
        let mut shard = self.lease_shard((idx, key.0)).lock();
        if shard.len() >= per_shard {
            shard.retain(|_, l| (l.expires > now && l.tokens > 0) || l.denied_until > now);
            if shard.len() >= per_shard {
                return;
            }
        }
        let e = shard
            .entry((idx, key.0))
            .or_insert(Lease { tokens: 0, ..lease });
        e.tokens = e.tokens.saturating_add(lease.tokens);
        e.expires = e.expires.max(lease.expires);
        e.denied_until = lease.denied_until;
        e.remaining = lease.remaining;
        e.full_at = lease.full_at;
    }

    fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.conn.lock();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.retry_interval);
        let c = ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs the script for `want` requests; `Err` on any failure or timeout.
    async fn call(
        &self,
        policy: &str,
        emission: u64,
        tolerance: u64,
        key: ClientKey,
        want: u32,
    ) -> Result<(u32, Decision), ()> {
        let redis_key = format!("{}:{policy}:{key}", self.prefix);
        let emission_us = (emission / 1000).max(1);
        let tolerance_us = (tolerance / 1000).max(emission_us);
        let attempt = async {
            let mut conn = self.connection()?;
            script()
                .key(redis_key)
                .arg(emission_us)
                .arg(tolerance_us)
                .arg(want)
                .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok((granted, remaining, reset, retry))) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                let us = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1000);
                Ok((
                    u32::try_from(granted).unwrap_or(0),
                    Decision {
                        allowed: granted > 0,
                        remaining: u32::try_from(remaining).unwrap_or(0),
                        reset: us(reset),
                        retry_after: us(retry),
                    },
                ))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate limit: Redis call failed; deciding by the fallback");
                self.conn.lock().take();
                Err(())
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "rate limit: Redis did not answer in time; deciding by the fallback");
                self.conn.lock().take();
                Err(())
            }
        }
    }

    fn mark_down(&self, now: u64) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.available.swap(false, Ordering::Relaxed) {
            self.stats.unavailable_since.store(now, Ordering::Relaxed);
        }
        let retry = u64::try_from(self.retry_interval.as_nanos()).unwrap_or(u64::MAX);
        self.next_probe
            .store(now.saturating_add(retry), Ordering::Relaxed);
    }

    fn mark_up(&self) {
        if !self.available.swap(true, Ordering::Relaxed) {
            tracing::info!("rate limit: Redis answers again; limits are shared again");
        }
    }

    /// Whether this request should try Redis: always while it is available, else one
    /// request per retry interval.
    fn should_try(&self, now: u64) -> bool {
        if self.is_available() {
            return true;
        }
        let due = self.next_probe.load(Ordering::Relaxed);
        let retry = u64::try_from(self.retry_interval.as_nanos()).unwrap_or(u64::MAX);
        now >= due
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now.saturating_add(retry),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub(crate) fn collect(&self, w: &mut MetricWriter<'_>) {
        let labels = [("store", "redis")];
        w.family(
            "garrison_ratelimit_store_available",
            MetricType::Gauge,
            "Whether the shared rate-limit store answered its last call (1) or not (0).",
        );
        w.sample_u64(
            "garrison_ratelimit_store_available",
            &labels,
            u64::from(self.is_available()),
        );
        let (ok, errors, fallbacks, leases) = self.stats();
        w.family(
            "garrison_ratelimit_store_calls",
            MetricType::Counter,
            "Calls to the shared rate-limit store, by result.",
        );
        w.sample_u64(
            "garrison_ratelimit_store_calls",
            &[("store", "redis"), ("result", "ok")],
            ok,
        );
        w.sample_u64(
            "garrison_ratelimit_store_calls",
            &[("store", "redis"), ("result", "error")],
            errors,
        );
        w.family(
            "garrison_ratelimit_store_fallbacks",
            MetricType::Counter,
            "Decisions made without the shared store because it could not be reached.",
        );
        w.sample_u64("garrison_ratelimit_store_fallbacks", &labels, fallbacks);
        w.family(
            "garrison_ratelimit_store_lease_hits",
            MetricType::Counter,
            "Requests decided from a local lease of tokens, without a call to the store.",
        );
        w.sample_u64("garrison_ratelimit_store_lease_hits", &labels, leases);
    }
}

/// A decision that waits for Redis.
pub(crate) struct Pending {
    idx: usize,
    fut: Pin<Box<dyn Future<Output = Result<Decision, Duration>> + Send>>,
}

impl Pending {
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<Verdict> {
        self.fut.as_mut().poll(cx).map(|r| match r {
            Ok(d) => shared.verdict(self.idx, d),
            Err(retry) => Verdict::Refused(shared.unavailable(self.idx, retry)),
        })
    }
}

/// Decides a request of policy `idx` and `key` with the Redis store `store`.
pub(crate) fn decide(
    store: &Arc<crate::RedisStore>,
    limiter: &Arc<RateLimiter>,
    idx: usize,
    key: ClientKey,
    shared: &Arc<Shared>,
) -> Verdict {
    let now = limiter.now();
    if let Some(d) = store.take_leased(idx, key, now) {
        return shared.verdict(idx, d);
    }
    if !store.should_try(now) {
        return match fallback(store, limiter, idx, key, now) {
            Ok(d) => shared.verdict(idx, d),
            Err(retry) => Verdict::Refused(shared.unavailable(idx, retry)),
        };
    }
    let store = store.clone();
    let limiter = limiter.clone();
    let fut = async move {
        let p = &limiter.policies[idx];
        let q = *p.table.quota();
        let want = store.batch(q.burst);
        match store
            .call(p.policy.name(), q.emission, q.tolerance, key, want)
            .await
        {
            Ok((granted, d)) => {
                store.mark_up();
                let now = limiter.now();
                if granted > 1 {
                    store.store_lease(
                        idx,
                        key,
                        Lease {
                            tokens: granted - 1,
                            expires: now.saturating_add(q.emission * u64::from(granted)),
                            denied_until: 0,
                            remaining: d.remaining,
                            full_at: now.saturating_add(d.reset),
                        },
                        now,
                    );
                } else if granted == 0 && store.lease_fraction > 0.0 {
                    store.store_lease(
                        idx,
                        key,
                        Lease {
                            tokens: 0,
                            expires: 0,
                            denied_until: now.saturating_add(d.retry_after),
                            remaining: 0,
                            full_at: now.saturating_add(d.reset),
                        },
                        now,
                    );
                }
                let mut d = d;
                d.remaining = d.remaining.saturating_add(granted.saturating_sub(1));
                Ok(d)
            }
            Err(()) => {
                let now = limiter.now();
                store.mark_down(now);
                fallback(&store, &limiter, idx, key, now)
            }
        }
    };
    Verdict::Pending(PendingVerdict::new(
        Pending {
            idx,
            fut: Box::pin(fut),
        },
        shared.clone(),
    ))
}

fn fallback(
    store: &crate::RedisStore,
    limiter: &RateLimiter,
    idx: usize,
    key: ClientKey,
    now: u64,
) -> Result<Decision, Duration> {
    store.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
    match store.fail {
        FailMode::Open => Ok(limiter.policies[idx].table.check(key, now)),
        FailMode::Closed => Err(store.retry_interval),
    }
}
