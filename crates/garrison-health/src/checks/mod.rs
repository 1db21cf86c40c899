//! The checks Garrison ships.

#[cfg(feature = "breaker")]
mod breaker;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "ratelimit")]
mod ratelimit;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlx")]
mod sqlx;

#[cfg(feature = "breaker")]
pub use self::breaker::BreakerCheck;
#[cfg(feature = "http")]
pub use self::http::{HttpCheck, HttpCheckError};
#[cfg(feature = "ratelimit")]
pub use self::ratelimit::RateLimitStoreCheck;
#[cfg(feature = "redis")]
pub use self::redis::RedisCheck;
#[cfg(feature = "sqlx")]
pub use self::sqlx::{
    CheckedDatabase, DbMetrics, InstrumentedPool, PoolCheck, PoolStats, DEFAULT_WAIT_BUCKETS,
};
