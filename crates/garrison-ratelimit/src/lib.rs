#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! - [`Policy`]: a named limit (`general`: 100 per minute; `auth`: 5 per 15 minutes), with a
//!   burst; attached to routes by their label, with a default policy and exempt routes.
//! - [`KeySource`]: who a request counts against: the client address (forwarding headers
//!   believed only from [`TrustedProxies`]), a header such as an API key (hashed, never kept
//!   in clear), an identity from request extensions, or one global bucket.
//! - [`HeaderSet`]: which headers responses carry.
//! - The memory store bounds what it tracks ([`RateLimitBuilder::max_keys`], at most
//!   [`BYTES_PER_KEY_MAX`] bytes a key) and drops idle keys a shard at a time.
//! - [`RedisStore`]: the same GCRA in one Lua script on the server, with local leases of
//!   tokens to save round trips and a fallback to memory when Redis is down.
//! - Metrics through garrison-metrics: `garrison_ratelimit_decisions_total{policy,decision}`,
//!   `garrison_ratelimit_tracked_keys{policy}` and the store's availability and fallbacks.
//!
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod gcra;
mod headers;
mod key;
mod layer;
mod limiter;
mod policy;
mod store;

pub use garrison_core::{ForwardedHeader, IpNet, Part, PeerAddr, RequestInfo, TrustedProxies};
pub use gcra::Decision;
pub use headers::{
    HeaderSet, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET, X_RATELIMIT_RETRY_AFTER,
};
pub use key::{ClientKey, KeyExtractor, KeySource, RequestParts};
pub use layer::{
    Allowance, ConfigError, PendingVerdict, RateLimitBuilder, RateLimitLayer, RateLimitService,
    ResponseFuture, Verdict, DEFAULT_MAX_KEYS, DEFAULT_SWEEP_INTERVAL,
};
pub use limiter::{RateLimiter, OVERFLOW_WARN_SHARE};
pub use policy::{Policy, PolicyError, MAX_LIMIT};
pub use store::memory::BYTES_PER_KEY_MAX;
#[cfg(feature = "redis")]
pub use store::redis::{FailMode, RedisStore, RedisStoreError};
