//! `[breaker]` profiles as breaker configurations.

use garrison_breaker::{BreakerConfig, ConfigError, Window};

use super::{BreakerSection, WindowConfig};

impl BreakerSection {
    /// The breaker configuration of profile `name`: the built-in profile it names or
    /// bases itself on, with this section's overrides, validated.
    pub(crate) fn profile_config(&self, name: &str) -> Result<BreakerConfig, ConfigError> {
        let custom = self.profiles.get(name);
        let base = custom.and_then(|p| p.base.as_deref()).unwrap_or(name);
        let mut cfg = match base {
            "default" => BreakerConfig::default(),
            other => BreakerConfig::profile(other).unwrap_or_default(),
        };
        if let Some(p) = custom {
            if let Some(w) = p.window {
                cfg = cfg.window(match w {
                    WindowConfig::Calls(n) => Window::Count(n),
                    WindowConfig::Time(d) => Window::Time(d),
                });
            }
            if let Some(n) = p.minimum_calls {
                cfg = cfg.minimum_calls(n);
            }
            if let Some(r) = p.failure_rate {
                cfg = cfg.failure_rate_threshold(r);
            }
            if let Some(n) = p.failure_count {
                cfg = cfg.failure_count(n);
            }
            if let Some(r) = p.slow_call_rate {
                cfg = cfg.slow_call_rate_threshold(r);
            }
            if let Some(d) = p.slow_call_duration {
                cfg = cfg.slow_call_duration(d);
            }
            if let Some(d) = p.wait_in_open {
                cfg = cfg.wait_in_open(d);
            }
            if p.wait_multiplier.is_some() || p.max_wait_in_open.is_some() {
                let snapshot = cfg.wait_growth();
                cfg = cfg.exponential_wait(
                    p.wait_multiplier.unwrap_or(snapshot.0),
                    p.max_wait_in_open.unwrap_or(snapshot.1),
                );
            }
            if let Some(n) = p.half_open_calls {
                cfg = cfg.half_open_calls(n);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
