//! The Redis store: one limit shared by every replica.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use garrison_metrics::{MetricType, MetricWriter};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Answer, Ask, Fallback, Nanos, Store};
use crate::gcra::Decision;
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
/// **Leases.** Asking Redis for every request costs a round trip each. A replica that sees a
/// key busy takes a lease: a few tokens in one call, spent locally for at most
/// [`lease_ttl`](Self::lease_ttl) (default 20 ms). Each lease is sized on the replica's own
/// pace for that key, what it spent of the key in half a lease lifetime on the last lease,
/// between 2 and [`lease_fraction`](Self::lease_fraction) of the burst (default 2 %). One
/// lease call per key is in flight at a time; the key's other requests meanwhile ask Redis for
/// one token each. Tokens are only ever taken from Redis, so the shared limit holds, and
/// tokens a lease did not spend before it expired go back to the bucket with that replica's
/// next call for the key. The bounds, with `R` replicas:
///
/// - over the limit: at most `R` leases at any time (each at most what that replica admits of
///   the key in 10 ms, and at most 2 % of the burst);
/// - under it: the unspent tokens of the last lease of each replica that stops calling for a
///   key, at most `R` such leases, until that replica calls for the key again.
///
/// Policies whose burst is below `1 / fraction` (e.g. 5 logins per 15 minutes) always ask
/// Redis. A refusal from Redis is remembered until its `Retry-After` ends, so that a client
/// hammering a spent limit costs no round trips. Only tokens another replica gives back
/// meanwhile (at most one lease each) could have admitted a request earlier.
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
    target: Target,
    conn: Mutex<Option<Conn>>,
    timeout: Duration,
    retry_interval: Duration,
    fail: FailMode,
    prefix: Arc<str>,
    secret: u64,
    lease_fraction: f64,
    lease_ttl: u64,
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

/// What a replica holds of one key: a lease of tokens taken from Redis, or a refusal.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    /// Tokens taken from Redis and not yet spent.
    tokens: u32,
    /// After this, unspent tokens are not spent: they go back to Redis with the next call.
    expires: u64,
    /// Redis refused until then: refusing locally until then is exact (up to tokens another
    /// replica gives back meanwhile, at most one lease each).
    denied_until: u64,
    remaining: u32,
    full_at: u64,
    /// The size of the next lease: what this replica spent of the key in half a lease
    /// lifetime, measured on the last lease.
    size: u32,
    /// When the current lease was granted, and how many tokens it had.
    granted_at: u64,
    granted: u32,
    /// A lease call is in flight: other requests of the key ask Redis for one token each
    /// meanwhile, rather than each taking a lease.
    refilling: bool,
}

/// What a request of a key does first.
enum LeaseStep {
    /// Decided from what this replica holds.
    Decided(Decision),
    /// Ask Redis for `want` tokens (more than one: a lease), giving back `back` unspent ones.
    Ask { want: u32, back: u32 },
}

/// The size of a key's first lease.
const FIRST_LEASE: u32 = 4;

const LEASE_SHARDS: usize = 16;

/// Leases by (policy index, key).
type Leases = HashMap<(usize, u64), Lease>;

/// Where the store's Redis is: one server, or a cluster.
enum Target {
    Single(redis::Client),
    Cluster(Vec<String>),
}

/// An open connection, shared by every call (both kinds multiplex).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

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
    ///
    /// A Redis Cluster (or Valkey cluster) is `redis+cluster://host1:port1,host2:port2` (any
    /// of its nodes; `rediss+cluster://` for TLS): each key's script runs on the node that
    /// holds its slot (the script touches that one key), and the cluster's redirections and
    /// topology changes are followed.
    pub fn new(url: &str) -> Result<Self, RedisStoreError> {
        let target = match garrison_core::redis_cluster_nodes(url) {
            Some(nodes) => {
                for n in &nodes {
                    redis::Client::open(n.as_str()).map_err(|e| {
                        RedisStoreError(format!(
                            "rate limit: the Redis Cluster node `{n}` does not parse: {e}"
                        ))
                    })?;
                }
                if nodes.is_empty() {
                    return Err(RedisStoreError(
                        "rate limit: the Redis Cluster URL names no node".into(),
                    ));
                }
                Target::Cluster(nodes)
            }
            None => Target::Single(redis::Client::open(url).map_err(|e| {
                RedisStoreError(format!("rate limit: the Redis URL does not parse: {e}"))
            })?),
        };
        Ok(Self {
            target,
            conn: Mutex::new(None),
            timeout: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            fail: FailMode::Open,
            prefix: "garrison:ratelimit".into(),
            secret: 0x6761_7272_6973_6f6e,
            lease_fraction: 0.02,
            lease_ttl: 20_000_000,
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

    /// The share of a policy's burst one lease may take at most (default 0.02; 0 asks Redis
    /// for every request and remembers no refusal).
    pub fn lease_fraction(mut self, fraction: f64) -> Self {
        self.lease_fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    /// How long a lease's tokens may be spent before those left go back to Redis (default
    /// 20 ms). Longer: fewer calls, and more tokens held by one replica at a time.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1);
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

    /// Decides from this replica's lease or remembered refusal of `key`, or says what to ask
    /// Redis for. `max` is the largest lease of the policy (1: no leases).
    fn take(&self, idx: usize, key: ClientKey, now: u64, max: u32) -> LeaseStep {
        if self.lease_fraction <= 0.0 {
            return LeaseStep::Ask { want: 1, back: 0 };
        }
        let mut shard = self.lease_shard((idx, key.0)).lock();
        let Some(lease) = shard.get_mut(&(idx, key.0)) else {
            if max <= 1 || !self.room_for_lease(&mut shard, now) {
                return LeaseStep::Ask { want: 1, back: 0 };
            }
            let size = FIRST_LEASE.min(max);
            shard.insert(
                (idx, key.0),
                Lease {
                    size,
                    refilling: true,
                    ..Lease::default()
                },
            );
            return LeaseStep::Ask {
                want: size,
                back: 0,
            };
        };
        if now < lease.denied_until {
            self.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
            return LeaseStep::Decided(Decision {
                allowed: false,
                remaining: 0,
                reset: lease.full_at.saturating_sub(now),
                retry_after: lease.denied_until - now,
            });
        }
        if lease.tokens > 0 && now < lease.expires {
            lease.tokens -= 1;
            self.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
            return LeaseStep::Decided(Decision {
                allowed: true,
                remaining: lease.remaining.saturating_add(lease.tokens),
                reset: lease.full_at.saturating_sub(now),
                retry_after: 0,
            });
        }
        if lease.refilling || max <= 1 {
            return LeaseStep::Ask { want: 1, back: 0 };
        }
        // the lease is spent or expired: the next one is sized on how fast this one went
        let back = lease.tokens;
        if lease.granted > 0 {
            let spent = u64::from(lease.granted - back);
            let took = now.saturating_sub(lease.granted_at).max(1);
            let in_half_a_lifetime = spent.saturating_mul(self.lease_ttl / 2) / took;
            lease.size = u32::try_from(in_half_a_lifetime).unwrap_or(u32::MAX);
        }
        // at least two, so that a slow key's rate can still be measured and grow
        lease.size = lease.size.clamp(2, max);
        lease.tokens = 0;
        lease.granted = 0;
        lease.refilling = true;
        LeaseStep::Ask {
            want: lease.size,
            back,
        }
    }

    /// Whether a shard has room for one more key's lease, after dropping those with nothing
    /// in them.
    fn room_for_lease(&self, shard: &mut Leases, now: u64) -> bool {
        let per_shard = self.max_leases / LEASE_SHARDS;
        if shard.len() >= per_shard {
            shard.retain(|_, l| l.refilling || l.tokens > 0 || l.denied_until > now);
        }
        shard.len() < per_shard
    }

    /// Keeps what Redis answered a call for `want` tokens of `key`: the lease's tokens, or the
    /// refusal. `None`: the call failed.
    fn settle(
        &self,
        idx: usize,
        key: ClientKey,
        want: u32,
        answer: Option<(u32, &Decision)>,
        now: u64,
    ) {
        if self.lease_fraction <= 0.0 {
            return;
        }
        let mut shard = self.lease_shard((idx, key.0)).lock();
        let lease = match answer {
            // a refusal is remembered even without a lease
            Some((0, _)) => {
                if !shard.contains_key(&(idx, key.0)) && !self.room_for_lease(&mut shard, now) {
                    return;
                }
                shard.entry((idx, key.0)).or_default()
            }
            _ => match shard.get_mut(&(idx, key.0)) {
                Some(l) => l,
                None => return,
            },
        };
        if want > 1 {
            lease.refilling = false;
        }
        let Some((granted, d)) = answer else {
            return;
        };
        lease.remaining = d.remaining;
        lease.full_at = now.saturating_add(d.reset);
        if granted == 0 {
            lease.denied_until = now.saturating_add(d.retry_after);
        } else if want > 1 {
            lease.denied_until = 0;
            lease.tokens = granted - 1;
            lease.granted = granted;
            lease.granted_at = now;
            lease.expires = now.saturating_add(self.lease_ttl);
        }
    }

    async fn connection(&self) -> Result<Conn, redis::RedisError> {
        if let Some(c) = &*self.conn.lock() {
            return Ok(c.clone());
        }
        let c = match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(self.retry_interval);
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    cfg,
                )?)
            }
            Target::Cluster(nodes) => Conn::Cluster(
                redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(1)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        };
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// Runs the script for `want` requests; `Err` on any failure or timeout.
    async fn call(
        &self,
        redis_key: String,
        emission: u64,
        tolerance: u64,
        want: u32,
        back: u32,
    ) -> Result<(u32, Decision), ()> {
        let emission_us = (emission / 1000).max(1);
        let tolerance_us = (tolerance / 1000).max(emission_us);
        let attempt = async {
            let mut invocation = script().key(redis_key);
            invocation
                .arg(emission_us)
                .arg(tolerance_us)
                .arg(want)
                .arg(back);
            match self.connection().await? {
                Conn::Single(mut c) => {
                    invocation
                        .invoke_async::<(i64, i64, i64, i64)>(&mut c)
                        .await
                }
                Conn::Cluster(mut c) => {
                    invocation
                        .invoke_async::<(i64, i64, i64, i64)>(&mut c)
                        .await
                }
            }
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

    /// Who decides while Redis cannot be reached, counted.
    fn fallback(&self) -> Fallback {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.fail {
            FailMode::Open => Fallback::Memory,
            FailMode::Closed => Fallback::Refuse(self.retry_interval),
        }
    }

    fn collect(&self, w: &mut MetricWriter<'_>) {
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

impl Store for Arc<RedisStore> {
    fn decide(&self, ask: Ask<'_>, clock: &Nanos) -> Answer {
        let Ask {
            policy: idx,
            name,
            quota,
            key,
            now,
            ..
        } = ask;
        let max = self.batch(quota.burst);
        let (want, back) = match self.take(idx, key, now, max) {
            LeaseStep::Decided(d) => return Answer::Decided(d),
            LeaseStep::Ask { want, back } => (want, back),
        };
        if !self.should_try(now) {
            self.settle(idx, key, want, None, now);
            return Answer::Failed(self.fallback());
        }
        let store = self.clone();
        let clock = clock.clone();
        let redis_key = format!("{}:{name}:{key}", self.prefix);
        let (emission, tolerance) = (quota.emission, quota.tolerance);
        Answer::Waiting(Box::pin(async move {
            // a request dropped while it waits (its client went away) must not leave the
            // key's lease marked as refilling
            let mut unsettled = Unsettled {
                store: &store,
                idx,
                key,
                want,
            };
            match store.call(redis_key, emission, tolerance, want, back).await {
                Ok((granted, d)) => {
                    unsettled.want = 0;
                    store.mark_up();
                    store.settle(idx, key, want, Some((granted, &d)), clock.now());
                    let mut d = d;
                    d.remaining = d.remaining.saturating_add(granted.saturating_sub(1));
                    Ok(d)
                }
                Err(()) => {
                    unsettled.want = 0;
                    let now = clock.now();
                    store.settle(idx, key, want, None, now);
                    store.mark_down(now);
                    Err(store.fallback())
                }
            }
        }))
    }

    fn collect(&self, w: &mut MetricWriter<'_>) {
        RedisStore::collect(self, w);
    }
}

/// Settles a lease call that did not finish, when dropped (`want` 0: it finished).
struct Unsettled<'a> {
    store: &'a RedisStore,
    idx: usize,
    key: ClientKey,
    want: u32,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.want > 1 {
            self.store.settle(self.idx, self.key, self.want, None, 0);
        }
    }
}
