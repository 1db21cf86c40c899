//! Breaker settings and the named profiles.

use std::fmt;
use std::time::Duration;

use garrison_core::FailureClassifier;

/// Which recent calls the failure and slow-call rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `duration`, in one-second buckets (rounded up to whole seconds,
    /// at most 3600).
    Time(Duration),
}

/// How a breaker decides and waits. Build one with [`BreakerConfig::default`] and the setters,
/// or take a [profile](BreakerConfig::profile).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) failure_count: u32,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Duration,
    pub(crate) wait_in_open: Duration,
    pub(crate) wait_multiplier: f64,
    pub(crate) max_wait_in_open: Duration,
    pub(crate) half_open_calls: u32,
    pub(crate) retry_after_jitter: f64,
    pub(crate) classifier: FailureClassifier,
}

impl Default for BreakerConfig {
    /// Resilience4j's defaults: the last 100 calls, at least 100 calls, opens at 50% failures
    /// (slow calls: 100% of calls slower than 60 s), waits 60 s open, 10 probe calls.
    fn default() -> Self {
        Self {
            window: Window::Count(100),
            minimum_calls: 100,
            failure_rate_threshold: 0.5,
            failure_count: 0,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(60),
            wait_in_open: Duration::from_secs(60),
            wait_multiplier: 1.0,
            max_wait_in_open: Duration::from_secs(60),
            half_open_calls: 10,
            retry_after_jitter: 0.1,
            classifier: FailureClassifier::default(),
        }
    }
}

/// A [`BreakerConfig`] value was out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: &'static str,
    reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "breaker.{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl BreakerConfig {
    /// A named profile:
    ///
    /// | profile | window | opens when | open for |
    /// |---|---|---|---|
    /// | `database` | 30 s | 5 calls seen and ≥ 50% failed | 30 s, doubling up to 5 min |
    /// | `critical` | 10 s | 3 calls seen and ≥ 50% failed | 10 s, doubling up to 1 min |
    /// | `batch` | 60 s | 10 calls seen and ≥ 50% failed | 60 s, doubling up to 10 min |
    /// | `analytics` | 45 s | 8 calls failed | 45 s, doubling up to 10 min |
    pub fn profile(name: &str) -> Option<Self> {
        let (window, min, wait, max) = match name {
            "database" => (30, 5, 30, 300),
            "critical" => (10, 3, 10, 60),
            "batch" => (60, 10, 60, 600),
            "analytics" => {
                let base = Self::profile("batch")?;
                return Some(Self {
                    window: Window::Time(Duration::from_secs(45)),
                    wait_in_open: Duration::from_secs(45),
                    ..base.failure_count(8)
                });
            }
            _ => return None,
        };
        Some(Self {
            window: Window::Time(Duration::from_secs(window)),
            minimum_calls: min,
            wait_in_open: Duration::from_secs(wait),
            wait_multiplier: 2.0,
            max_wait_in_open: Duration::from_secs(max),
            half_open_calls: 3,
            ..Self::default()
        })
    }

    /// The sliding window (default: the last 100 calls).
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Calls the window must hold before the rates are judged (default 100).
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Opens when this share of calls failed, `0 < rate ≤ 1` (default 0.5).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate;
        self
    }

    /// Opens when `n` calls of the window failed, whatever their share and however few calls
    /// the window holds ("5 failures in 30 s"), instead of judging the failure rate; `0` (the
    /// default) judges the rate. Half-open probes are still judged by the rate, and slow
    /// calls by theirs.
    pub fn failure_count(mut self, n: u32) -> Self {
        self.failure_count = n;
        self
    }

    /// Opens when this share of calls was slow, `0 < rate ≤ 1` (default 1.0).
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_call_rate_threshold = rate;
        self
    }

    /// A call at least this long is slow (default 60 s).
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.slow_call_duration = d;
        self
    }

    /// How long the breaker stays open before probing (default 60 s).
    pub fn wait_in_open(mut self, d: Duration) -> Self {
        self.wait_in_open = d;
        self
    }

    /// Grows the open wait on repeated trips: `wait × multiplier^(trips − 1)`, capped at
    /// `max` (default: no growth).
    pub fn exponential_wait(mut self, multiplier: f64, max: Duration) -> Self {
        self.wait_multiplier = multiplier;
        self.max_wait_in_open = max;
        self
    }

    /// The open wait's growth: the multiplier of each consecutive trip and the longest wait
    /// (see [`exponential_wait`](Self::exponential_wait)).
    pub fn wait_growth(&self) -> (f64, Duration) {
        (self.wait_multiplier, self.max_wait_in_open)
    }

    /// Probe calls admitted in half-open (default 10, at most 1000).
    pub fn half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// Up to this share is added at random to `Retry-After`, so that rejected clients do not
    /// all return at once (default 0.1; 0 turns it off).
    pub fn retry_after_jitter(mut self, share: f64) -> Self {
        self.retry_after_jitter = share;
        self
    }

    /// What counts as a failure (default: errors and `5xx`).
    pub fn classifier(mut self, classifier: FailureClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason| Err(ConfigError { key, reason });
        match self.window {
            Window::Count(0) => return err("window", "must hold at least one call"),
            Window::Count(n) if n > 1_000_000 => return err("window", "at most 1000000 calls"),
            Window::Time(d) if d < Duration::from_secs(1) => {
                return err("window", "must be at least 1s")
            }
            Window::Time(d) if d > Duration::from_secs(3600) => {
                return err("window", "must be at most 1h")
            }
            _ => {}
        }
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if self.minimum_calls == 0 {
            return err("minimum_calls", "must be > 0");
        }
        if !rate_ok(self.failure_rate_threshold) {
            return err("failure_rate_threshold", "must be in (0, 1]");
        }
        if !rate_ok(self.slow_call_rate_threshold) {
            return err("slow_call_rate_threshold", "must be in (0, 1]");
        }
        if self.half_open_calls == 0 {
            return err("half_open_calls", "must be > 0");
        }
        if self.half_open_calls > 1000 {
            // probe results are counted in 10-bit fields of one atomic word
            return err("half_open_calls", "at most 1000");
        }
        if !(self.wait_multiplier >= 1.0 && self.wait_multiplier.is_finite()) {
            return err("wait_multiplier", "must be a finite number ≥ 1");
        }
        if self.max_wait_in_open < self.wait_in_open {
            return err("max_wait_in_open", "must be ≥ wait_in_open");
        }
        if !(0.0..=1.0).contains(&self.retry_after_jitter) {
            return err("retry_after_jitter", "must be in [0, 1]");
        }
        Ok(())
    }

    pub(crate) fn open_wait(&self, trips: u32) -> Duration {
        let factor = self
            .wait_multiplier
            .powi(trips.saturating_sub(1).min(64) as i32);
        let wait = self.wait_in_open.as_secs_f64() * factor;
        Duration::from_secs_f64(wait.min(self.max_wait_in_open.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_unknown_ones_are_none() {
        for p in ["database", "critical", "batch", "analytics"] {
            BreakerConfig::profile(p).unwrap().validate().unwrap();
        }
        assert!(BreakerConfig::profile("nope").is_none());
        BreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = BreakerConfig::default()
            .failure_rate_threshold(0.0)
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "breaker.failure_rate_threshold: must be in (0, 1]"
        );
        let e = BreakerConfig::default()
            .window(Window::Count(0))
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("breaker.window:"));
        let e = BreakerConfig::default()
            .half_open_calls(1001)
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "breaker.half_open_calls: at most 1000");
        BreakerConfig::default()
            .half_open_calls(1000)
            .validate()
            .unwrap();
        let e = BreakerConfig::default()
            .exponential_wait(2.0, Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("breaker.max_wait_in_open:"));
    }

    #[test]
    fn open_wait_grows_and_caps() {
        let c = BreakerConfig::default()
            .wait_in_open(Duration::from_secs(10))
            .exponential_wait(2.0, Duration::from_secs(60));
        let waits: Vec<u64> = (1..=5).map(|t| c.open_wait(t).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60]);
    }
}
