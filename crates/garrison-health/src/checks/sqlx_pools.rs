// The sqlx checks and pool metrics, written once for the sqlx of the module that includes this
// file (`sqlx` 0.9 at the crate root, `sqlx_0_8` in `garrison_health::sqlx_0_8`): that module
// names its sqlx `sqlx`, and invokes `checked_database!` for the databases it has features for.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garrison_metrics::{Collector, DurationHistogram, MetricType, MetricWriter, MetricsRegistry};
use parking_lot::RwLock;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use crate::check::BoxFuture;
use crate::status::ms;
use crate::{Check, CheckResult, Measurement};

/// The figures of a sqlx pool at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// Connections checked out.
    pub used: u32,
    /// The pool's maximum.
    pub max: u32,
}

impl PoolStats {
    /// The figures of `pool` now.
    pub fn of<DB: Database>(pool: &Pool<DB>) -> Self {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
        Self {
            size,
            idle,
            used: size - idle,
            max: pool.options().get_max_connections(),
        }
    }

    /// Connections in use over the maximum, 0 to 1.
    pub fn utilization(&self) -> f64 {
        if self.max == 0 {
            return 0.0;
        }
        f64::from(self.used) / f64::from(self.max)
    }
}

/// The round trip from which a [`PoolCheck`] warns by default: 5 s.
pub const DEFAULT_WARN_RESPONSE_TIME: Duration = Duration::from_secs(5);

/// A sqlx pool's health: a `SELECT 1` round trip (`db:responseTime`, ms; `warn` from 5 s by
/// default), the pool's utilisation (`db:utilization`, percent; `warn` from 80% by default)
/// and its connections (`db:connections`, in use, with `size`, `idle`, `used`, `max`).
///
/// The round trip never waits for the application's connections: when every connection is
/// in use it only takes an idle one, and otherwise reports the exhausted pool as a `warn`
/// (a database busy serving is not down). A database that does not answer is cut off by the
/// check's timeout. Works with PostgreSQL, MySQL/MariaDB and SQLite pools (features
/// `postgres`, `mysql`, `sqlite`).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use garrison_health::{CheckOptions, HealthRegistry, PoolCheck};
///
/// let pool = sqlx::PgPool::connect_lazy("postgres://app@127.0.0.1/app")?;
/// let health = HealthRegistry::new();
/// health.register("postgres", PoolCheck::new(pool), CheckOptions::readiness())?;
/// # Ok(()) }
/// ```
pub struct PoolCheck<DB: Database> {
    pool: Pool<DB>,
    query: Cow<'static, str>,
    warn_at: f64,
    warn_after: Duration,
}

impl<DB: Database> fmt::Debug for PoolCheck<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCheck")
            .field("query", &self.query)
            .field("warn_at", &self.warn_at)
            .field("warn_after", &self.warn_after)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> PoolCheck<DB> {
    /// A check of `pool` (a clone: pools are handles).
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            query: Cow::Borrowed("SELECT 1"),
            warn_at: 0.8,
            warn_after: DEFAULT_WARN_RESPONSE_TIME,
        }
    }

    /// The statement of the round trip. Default: `SELECT 1`.
    pub fn query(mut self, sql: impl Into<Cow<'static, str>>) -> Self {
        self.query = sql.into();
        self
    }

    /// The round trip from which the check warns, before the database is slow enough for
    /// its timeout to fail it. Default: [`DEFAULT_WARN_RESPONSE_TIME`].
    pub fn warn_response_time(mut self, after: Duration) -> Self {
        self.warn_after = after;
        self
    }

    /// The utilisation (0 to 1) from which the check warns. Default: 0.8.
    pub fn warn_utilization(mut self, share: f64) -> Self {
        self.warn_at = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.8
        };
        self
    }
}

/// The databases whose pools [`PoolCheck`] checks: PostgreSQL, MySQL/MariaDB and SQLite,
/// each behind its feature.
pub trait CheckedDatabase: Database + sealed::Sealed {
    #[doc(hidden)]
    fn round_trip<'c>(
        conn: &'c mut PoolConnection<Self>,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// A round trip on a connection of its own, outside the pool: the real error (refused,
    /// bad password) rather than the pool's retries until its acquire timeout.
    #[doc(hidden)]
    fn direct_round_trip<'c>(
        pool: &'c Pool<Self>,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<std::time::Duration, sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
}

/// `checked_database!("postgres", sqlx::Postgres, |sql| query)`: `CheckedDatabase` for `$db`
/// behind the feature, with `query` the executable form of the text `sql` (sqlx 0.9 takes only
/// text it is told is safe, sqlx 0.8 the text itself).
macro_rules! checked_database {
    ($feature:literal, $db:ty, |$sql:ident| $query:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $db {}

        #[cfg(feature = $feature)]
        impl CheckedDatabase for $db {
            fn round_trip<'c>(
                conn: &'c mut PoolConnection<Self>,
                sql: &'c str,
            ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
                let conn: &'c mut <$db as Database>::Connection = &mut **conn;
                let $sql = sql;
                let done = sqlx::Executor::execute(conn, $query);
                Box::pin(async move { done.await.map(drop) })
            }

            fn direct_round_trip<'c>(
                pool: &'c Pool<Self>,
                sql: &'c str,
            ) -> BoxFuture<'c, Result<std::time::Duration, sqlx::Error>> {
                use sqlx::{ConnectOptions, Connection};
                let opts = pool.connect_options();
                Box::pin(async move {
                    let mut conn = opts.connect().await?;
                    let start = Instant::now();
                    let $sql = sql;
                    let done = sqlx::Executor::execute(&mut conn, $query).await;
                    let took = start.elapsed();
                    let _ = conn.close().await;
                    done.map(|_| took)
                })
            }
        }
    };
}

impl<DB: CheckedDatabase> PoolCheck<DB> {
    async fn run(&self) -> CheckResult {
        if self.pool.is_closed() {
            return CheckResult::fail("the pool is closed");
        }
        let stats = PoolStats::of(&self.pool);
        let util = stats.utilization();
        let mut utilization =
            Measurement::new("utilization").observed((util * 1000.0).round() / 10.0, "percent");
        if util >= self.warn_at {
            utilization = utilization.warn(format!(
                "{} of {} connections in use",
                stats.used, stats.max
            ));
        }
        let connections = Measurement::new("connections")
            .observed(stats.used, "connections")
            .field("size", f64::from(stats.size))
            .field("idle", f64::from(stats.idle))
            .field("used", f64::from(stats.used))
            .field("max", f64::from(stats.max));
        let round_trip = self.round_trip(stats).await;
        CheckResult::pass()
            .measurement(round_trip)
            .measurement(utilization)
            .measurement(connections)
    }

    async fn round_trip(&self, stats: PoolStats) -> Measurement {
        let m = Measurement::new("responseTime");
        if stats.size == 0 {
            // nothing open: the pool would hide a refused connection behind its retries
            return match DB::direct_round_trip(&self.pool, &self.query).await {
                Ok(took) => m.observed(ms(took), "ms").field("pooled", 0.0),
                Err(e) => m.fail(format!("cannot connect: {e}")),
            };
        }
        let acquire = Instant::now();
        let conn = if stats.used >= stats.max {
            match self.pool.try_acquire() {
                Some(c) => c,
                None => {
                    return m.warn("pool exhausted: every connection is in use, round trip skipped")
                }
            }
        } else {
            match self.pool.acquire().await {
                Ok(c) => c,
                Err(e) => return m.fail(format!("cannot get a connection: {e}")),
            }
        };
        let acquired = acquire.elapsed();
        let mut conn = conn;
        let start = Instant::now();
        match DB::round_trip(&mut conn, &self.query).await {
            Ok(_) => {
                let took = start.elapsed();
                let m = m.observed(ms(took), "ms").field("acquireMs", ms(acquired));
                if took >= self.warn_after {
                    m.warn(format!(
                        "slow round trip: {} ms, warned from {} ms",
                        ms(took).round(),
                        self.warn_after.as_millis()
                    ))
                } else {
                    m
                }
            }
            Err(e) => {
                // a connection that failed a trivial statement is not worth keeping
                conn.close_on_drop();
                m.fail(format!("round trip failed: {e}"))
            }
        }
    }
}

impl<DB: CheckedDatabase> Check for PoolCheck<DB> {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(self.run())
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("datastore")
    }
}

/// The default buckets (seconds) of `db_client_connection_wait_time_seconds`.
pub const DEFAULT_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

trait PoolSource: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn stats(&self) -> PoolStats;
    fn wait(&self) -> &DurationHistogram;
    fn timeouts(&self) -> u64;
}

struct PoolState<DB: Database> {
    name: String,
    pool: Pool<DB>,
    wait: DurationHistogram,
    timeouts: AtomicU64,
}

impl<DB: Database> PoolSource for PoolState<DB> {
    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> PoolStats {
        PoolStats::of(&self.pool)
    }

    fn wait(&self) -> &DurationHistogram {
        &self.wait
    }

    fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }
}

/// Database pool metrics in the OpenTelemetry `db.client.connection.*` conventions, in
/// Prometheus form, for every pool instrumented through it:
///
/// | family | type | labels |
/// |---|---|---|
/// | `db_client_connection_usage` | gauge | `db_client_connection_pool_name`, `db_client_connection_state` (`idle`, `used`) |
/// | `db_client_connection_max` | gauge | `db_client_connection_pool_name` |
/// | `db_client_connection_wait_time_seconds` | histogram | `db_client_connection_pool_name` |
/// | `db_client_connection_timeouts_total` | counter | `db_client_connection_pool_name` |
///
/// The connection count is `db.client.connection.count` of the current conventions under the
/// name it had until semconv 1.25 (`usage`): Prometheus' linter rejects a gauge ending in
/// `_count`, which it reserves for histograms and summaries. The counts are read from the
/// pool at scrape time; the wait time is measured where the
/// application takes connections, through [`InstrumentedPool::acquire`].
///
/// ```no_run
/// # async fn f() -> Result<(), sqlx::Error> {
/// use garrison_health::DbMetrics;
/// use garrison_metrics::MetricsRegistry;
///
/// let metrics = MetricsRegistry::new();
/// let db = DbMetrics::new(&metrics);
/// let orders = db.instrument("orders", sqlx::PgPool::connect_lazy("postgres://app@127.0.0.1/app")?);
/// let mut conn = orders.acquire().await?; // the wait is measured
/// sqlx::query("SELECT 1").execute(&mut *conn).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DbMetrics {
    pools: Arc<RwLock<Vec<Arc<dyn PoolSource>>>>,
    buckets: Arc<[f64]>,
}

impl fmt::Debug for DbMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .pools
            .read()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        f.debug_struct("DbMetrics").field("pools", &names).finish()
    }
}

struct DbCollector(Arc<RwLock<Vec<Arc<dyn PoolSource>>>>);

impl DbMetrics {
    /// Pool metrics published through `metrics`, with the default wait buckets.
    pub fn new(metrics: &MetricsRegistry) -> Self {
        let pools = Arc::new(RwLock::new(Vec::new()));
        metrics.register_collector(Arc::new(DbCollector(pools.clone())));
        Self {
            pools,
            buckets: DEFAULT_WAIT_BUCKETS.into(),
        }
    }

    /// Other wait-time buckets (seconds, strictly ascending) for pools instrumented from now
    /// on. Invalid bounds keep the defaults.
    pub fn wait_buckets(mut self, seconds: &[f64]) -> Self {
        if DurationHistogram::new(seconds).is_ok() {
            self.buckets = seconds.into();
        }
        self
    }

    /// Instruments `pool` under `name` (the `db_client_connection_pool_name` label; one
    /// name per pool).
    pub fn instrument<DB: Database>(&self, name: &str, pool: Pool<DB>) -> InstrumentedPool<DB> {
        let state = Arc::new(PoolState {
            name: name.to_owned(),
            pool,
            wait: DurationHistogram::new(&self.buckets)
                .expect("the defaults or buckets validated by wait_buckets"),
            timeouts: AtomicU64::new(0),
        });
        self.pools.write().push(state.clone());
        InstrumentedPool { state }
    }
}

/// A pool whose acquires are measured: use [`acquire`](Self::acquire) where the application
/// takes connections. Cheap to clone.
pub struct InstrumentedPool<DB: Database> {
    state: Arc<PoolState<DB>>,
}

impl<DB: Database> Clone for InstrumentedPool<DB> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for InstrumentedPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedPool")
            .field("name", &self.state.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<DB: Database> InstrumentedPool<DB> {
    /// Takes a connection, recording the wait in `db_client_connection_wait_time_seconds` and
    /// a pool timeout in `db_client_connection_timeouts_total`.
    pub async fn acquire(&self) -> Result<PoolConnection<DB>, sqlx::Error> {
        let start = Instant::now();
        let r = self.state.pool.acquire().await;
        self.state.wait.observe(start.elapsed());
        if matches!(r, Err(sqlx::Error::PoolTimedOut)) {
            self.state.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.state.pool
    }

    /// The pool's figures now.
    pub fn stats(&self) -> PoolStats {
        PoolStats::of(&self.state.pool)
    }

    /// A health check of this pool.
    pub fn check(&self) -> PoolCheck<DB> {
        PoolCheck::new(self.state.pool.clone())
    }
}

impl Collector for DbCollector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let pools = self.0.read().clone();
        const POOL: &str = "db_client_connection_pool_name";
        w.family(
            "db_client_connection_usage",
            MetricType::Gauge,
            "Connections of a database pool, by state (idle, used).",
        );
        let stats: Vec<PoolStats> = pools.iter().map(|p| p.stats()).collect();
        for (p, s) in pools.iter().zip(&stats) {
            for (state, n) in [("idle", s.idle), ("used", s.used)] {
                w.sample_u64(
                    "db_client_connection_usage",
                    &[(POOL, p.name()), ("db_client_connection_state", state)],
                    u64::from(n),
                );
            }
        }
        w.family(
            "db_client_connection_max",
            MetricType::Gauge,
            "The most connections a database pool opens.",
        );
        for (p, s) in pools.iter().zip(&stats) {
            w.sample_u64(
                "db_client_connection_max",
                &[(POOL, p.name())],
                u64::from(s.max),
            );
        }
        w.histogram_family(
            "db_client_connection_wait_time_seconds",
            "Time the application waited to take a connection from a database pool.",
        );
        for p in &pools {
            w.histogram(
                "db_client_connection_wait_time_seconds",
                &[(POOL, p.name())],
                p.wait(),
            );
        }
        w.family(
            "db_client_connection_timeouts",
            MetricType::Counter,
            "Attempts to take a connection from a database pool that timed out.",
        );
        for p in &pools {
            w.sample_u64(
                "db_client_connection_timeouts",
                &[(POOL, p.name())],
                p.timeouts(),
            );
        }
    }
}
