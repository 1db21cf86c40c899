//! Rate limiting for tower and axum: GCRA per client and per route, the IETF `RateLimit`
//! headers and the `X-RateLimit-*` trio, `429` with `Retry-After`, and a Redis store that
//! keeps one limit across every replica of a service.
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
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::{get, post}, Router};
//! use garrison_ratelimit::{KeySource, Policy, RateLimitLayer};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limits = RateLimitLayer::builder()
//!     .policy(Policy::per_minute("general", 100))
//!     .policy(Policy::new("auth", 5, Duration::from_secs(15 * 60)))
//!     .policy(Policy::new("upload", 10, Duration::from_secs(5 * 60)))
//!     .route("/login", "auth")
//!     .route("/upload", "upload")
//!     .policy_key("upload", KeySource::header("x-api-key"))
//!     .build()
//!     .unwrap();
//! let app = Router::new()
//!     .route("/login", post(|| async { "welcome" }))
//!     .route("/upload", post(|| async { "stored" }))
//!     .route("/items", get(|| async { "items" }))
//!     .layer(limits);
//!
//! let login = || Request::post("/login").body(Body::empty()).unwrap();
//! for _ in 0..5 {
//!     let ok = app.clone().oneshot(login()).await.unwrap();
//!     assert_eq!(ok.status(), StatusCode::OK);
//! }
//! let refused = app.clone().oneshot(login()).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "180");
//! assert_eq!(refused.headers()["ratelimit-policy"], "\"auth\";q=5;w=900");
//! assert_eq!(refused.headers()["ratelimit"], "\"auth\";r=0;t=900");
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod gcra;
mod headers;
mod key;
mod layer;
mod limiter;
mod policy;
mod store;

pub use garrison_core::{ForwardedHeader, IpNet, PeerAddr, TrustedProxies};
pub use gcra::Decision;
pub use headers::{
    HeaderSet, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
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
