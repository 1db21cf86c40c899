//! Named rate-limit policies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A named limit: `limit` requests per `period`, of which up to `burst` may come at once.
///
/// The policy is enforced with GCRA (the generic cell rate algorithm): one request is allowed
/// every `period / limit` (the emission interval), and a client that has been quiet may spend
/// up to `burst` requests at once. `burst` defaults to `limit`, so `Policy::new("general", 100,
/// 60s)` allows 100 requests at once and then one every 600 ms.
///
/// ```
/// use std::time::Duration;
/// use garrison_ratelimit::Policy;
///
/// let general = Policy::per_minute("general", 100);
/// let auth = Policy::new("auth", 5, Duration::from_secs(15 * 60));
/// let upload = Policy::new("upload", 10, Duration::from_secs(5 * 60)).burst(2);
/// assert_eq!(auth.emission_interval(), Duration::from_secs(180));
/// assert_eq!(upload.burst_size(), 2);
/// # assert!(general.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    name: Arc<str>,
    limit: u32,
    period: Duration,
    burst: Option<u32>,
}

/// The most a policy's limit or burst may be.
pub const MAX_LIMIT: u32 = 1_000_000_000;

impl Policy {
    /// `limit` requests per `period`, named `name` (the name appears in headers and metrics).
    pub fn new(name: impl Into<Arc<str>>, limit: u32, period: Duration) -> Self {
        Self {
            name: name.into(),
            limit,
            period,
            burst: None,
        }
    }

    /// `limit` requests per second.
    pub fn per_second(name: impl Into<Arc<str>>, limit: u32) -> Self {
        Self::new(name, limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub fn per_minute(name: impl Into<Arc<str>>, limit: u32) -> Self {
        Self::new(name, limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub fn per_hour(name: impl Into<Arc<str>>, limit: u32) -> Self {
        Self::new(name, limit, Duration::from_secs(3600))
    }

    /// How many requests a quiet client may send at once (default: the limit).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period the limit is counted over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst size.
    pub fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.limit)
    }

    /// The time between two requests at the steady rate: `period / limit`, rounded down to
    /// the nanosecond.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.quota().emission)
    }

    /// Checks that the policy can be enforced.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |reason: String| {
            Err(PolicyError {
                policy: self.name.to_string(),
                reason,
            })
        };
        if self.name.is_empty() || self.name.len() > 64 {
            return err("the name must have 1 to 64 characters".into());
        }
        if let Some(c) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return err(format!(
                "the name may hold letters, digits and `_-.:` only, not {c:?}"
            ));
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return err(format!("the limit must be 1 to {MAX_LIMIT}"));
        }
        if self.burst_size() == 0 || self.burst_size() > MAX_LIMIT {
            return err(format!("the burst must be 1 to {MAX_LIMIT}"));
        }
        let nanos = self.period.as_nanos();
        if nanos < u128::from(self.limit) * 1_000 {
            return err("the period must allow at least one microsecond per request".into());
        }
        if self.period > Duration::from_secs(366 * 24 * 3600) {
            return err("the period may be at most a year".into());
        }
        Ok(())
    }

    pub(crate) fn quota(&self) -> Quota {
        let emission = (self.period.as_nanos() / u128::from(self.limit.max(1))).max(1) as u64;
        let burst = self.burst_size().max(1);
        Quota {
            emission,
            tolerance: emission.saturating_mul(u64::from(burst)),
            burst,
        }
    }
}

/// A policy that cannot be enforced, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    policy: String,
    reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit policy `{}`: {}", self.policy, self.reason)
    }
}

impl std::error::Error for PolicyError {}

/// The arithmetic form of a policy, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Time between two requests at the steady rate.
    pub(crate) emission: u64,
    /// How far ahead of now the theoretical arrival time may run: `emission * burst`.
    pub(crate) tolerance: u64,
    pub(crate) burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_policy_and_the_reason() {
        let e = Policy::per_minute("x", 0).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "rate-limit policy `x`: the limit must be 1 to 1000000000"
        );
        assert!(Policy::per_minute("x y", 1).validate().is_err());
        assert!(Policy::per_minute("", 1).validate().is_err());
        assert!(Policy::per_minute("x", 1).burst(0).validate().is_err());
        assert!(Policy::new("x", 10, Duration::from_nanos(5))
            .validate()
            .is_err());
        assert!(Policy::per_minute("general", 100).validate().is_ok());
    }

    #[test]
    fn quota_arithmetic() {
        let q = Policy::per_minute("general", 100).quota();
        assert_eq!(q.emission, 600_000_000);
        assert_eq!(q.tolerance, 60_000_000_000);
        let q = Policy::per_minute("general", 100).burst(10).quota();
        assert_eq!(q.tolerance, 6_000_000_000);
        assert_eq!(q.burst, 10);
    }
}
