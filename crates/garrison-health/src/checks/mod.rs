//! The checks Garrison ships.

#[cfg(feature = "breaker")]
mod breaker;
#[cfg(feature = "http")]
mod http;
mod process;
#[cfg(feature = "ratelimit")]
mod ratelimit;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlx")]
mod sqlx {
    include!("sqlx_pools.rs");
    checked_database!("postgres", sqlx::Postgres, |sql| sqlx::query(
        sqlx::AssertSqlSafe(sql.to_owned())
    ));
    checked_database!("mysql", sqlx::MySql, |sql| sqlx::query(
        sqlx::AssertSqlSafe(sql.to_owned())
    ));
    checked_database!("sqlite", sqlx::Sqlite, |sql| sqlx::query(
        sqlx::AssertSqlSafe(sql.to_owned())
    ));
}

/// [`PoolCheck`](crate::PoolCheck), [`DbMetrics`](crate::DbMetrics) and the rest of the sqlx
/// support for pools of sqlx 0.8 (features `sqlx-0_8`, `postgres-0_8`, `mysql-0_8`,
/// `sqlite-0_8`), for services that have not moved to sqlx 0.9 yet. The same checks and
/// metrics as the crate root's, which take sqlx 0.9 pools.
#[cfg(feature = "sqlx-0_8")]
pub mod sqlx_0_8 {
    use ::sqlx_0_8 as sqlx;
    include!("sqlx_pools.rs");
    checked_database!("postgres-0_8", sqlx::Postgres, |sql| sql);
    checked_database!("mysql-0_8", sqlx::MySql, |sql| sql);
    checked_database!("sqlite-0_8", sqlx::Sqlite, |sql| sql);
}

#[cfg(feature = "breaker")]
pub use self::breaker::BreakerCheck;
#[cfg(feature = "http")]
pub use self::http::{HttpCheck, HttpCheckError};
pub use self::process::ProcessCheck;
#[cfg(feature = "ratelimit")]
pub use self::ratelimit::RateLimitStoreCheck;
#[cfg(feature = "redis")]
pub use self::redis::RedisCheck;
#[cfg(feature = "sqlx")]
pub use self::sqlx::{
    CheckedDatabase, DbMetrics, InstrumentedPool, PoolCheck, PoolStats, DEFAULT_WAIT_BUCKETS,
    DEFAULT_WARN_RESPONSE_TIME,
};
