use std::sync::Arc;

use garrison_ratelimit::RateLimiter;

use crate::check::BoxFuture;
use crate::{Check, CheckResult, Measurement};

/// Whether a rate limiter's Redis store answers: `fail` while it decides from its local
/// fallback (register it non-critical to make that a `warn`; the service keeps serving).
/// A limiter without a Redis store passes. It warns while the in-memory table overflows
/// ([`RateLimiter::is_overflowing`]): more clients are active than `max_keys` holds.
///
/// Reported as `ratelimit:store`, with the fallback decisions made so far.
#[derive(Clone, Debug)]
pub struct RateLimitStoreCheck {
    limiter: Arc<RateLimiter>,
}

impl RateLimitStoreCheck {
    /// A check of `limiter`'s store (`RateLimitLayer::limiter()`).
    pub fn new(limiter: &Arc<RateLimiter>) -> Self {
        Self {
            limiter: limiter.clone(),
        }
    }
}

impl Check for RateLimitStoreCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        // a store that does not answer is the worse news
        let overflowing = self.limiter.is_overflowing()
            && self.limiter.redis_store().is_none_or(|s| s.is_available());
        let m = match self.limiter.redis_store() {
            None => Measurement::new("store").observed("memory", "store"),
            Some(store) => {
                let (_, errors, fallbacks, _) = store.stats();
                let m = Measurement::new("store")
                    .observed("redis", "store")
                    .field("errors", errors as f64)
                    .field("fallbacks", fallbacks as f64);
                if store.is_available() {
                    m
                } else {
                    m.fail("Redis does not answer: limits come from the local fallback")
                }
            }
        };
        // the table holds fewer keys than there are active clients: they share buckets
        let m = if overflowing {
            m.warn("more clients are active than [ratelimit] max_keys holds: new clients share overflow buckets")
        } else {
            m
        };
        Box::pin(std::future::ready(CheckResult::pass().measurement(m)))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}
