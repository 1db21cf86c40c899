//! What the breaker's test files share.

use std::time::Duration;

use garrison_breaker::{BreakerConfig, Window};

/// The last 10 calls; opens at ≥ 50% failures once 4 calls are in; 30 s open; 3 probes; no
/// jitter, so waits are exact.
pub(crate) fn config() -> BreakerConfig {
    BreakerConfig::default()
        .window(Window::Count(10))
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .wait_in_open(Duration::from_secs(30))
        .half_open_calls(3)
        .retry_after_jitter(0.0)
}
