//! Named breakers, their admin operations and their metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use garrison_core::SharedClock;
use garrison_metrics::{Collector, MetricType, MetricWriter};
use parking_lot::RwLock;

use crate::breaker::{Breaker, BreakerSnapshot, Listener, State, Transition};
use crate::config::BreakerConfig;

/// Every breaker of a service by name: list them with their figures, reset, force open or
/// disable one (the gateway's admin API and the health checks use it), listen to their
/// transitions, and export their metrics by registering the registry as a
/// [`Collector`] of a `garrison_metrics::MetricsRegistry`.
#[derive(Clone, Default)]
pub struct BreakerRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    breakers: RwLock<BTreeMap<String, Breaker>>,
    listeners: Arc<RwLock<Vec<Listener>>>,
    clock: SharedClock,
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field(
                "breakers",
                &self.inner.breakers.read().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// No breaker has that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBreaker(pub String);

impl fmt::Display for UnknownBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no circuit breaker named `{}`", self.0)
    }
}

impl std::error::Error for UnknownBreaker {}

impl BreakerRegistry {
    /// An empty registry on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock its breakers read.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// An empty registry whose breakers read time from `clock` (tests: a `ManualClock` or
    /// tokio's paused clock).
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                clock,
                ..RegistryInner::default()
            }),
        }
    }

    /// The breaker called `name`, made with `config` if it does not exist yet (an existing
    /// breaker keeps its configuration).
    ///
    /// # Panics
    ///
    /// When `config` is invalid; check it first with [`BreakerConfig::validate`].
    pub fn breaker(&self, name: &str, config: BreakerConfig) -> Breaker {
        if let Some(b) = self.inner.breakers.read().get(name) {
            return b.clone();
        }
        if let Err(e) = config.validate() {
            panic!("invalid configuration for breaker `{name}`: {e}");
        }
        self.inner
            .breakers
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Breaker::new(
                    name,
                    config,
                    self.inner.clock.clone(),
                    self.inner.listeners.clone(),
                )
            })
            .clone()
    }

    /// The breaker called `name`.
    pub fn get(&self, name: &str) -> Option<Breaker> {
        self.inner.breakers.read().get(name).cloned()
    }

    /// Every breaker's figures, by name.
    pub fn list(&self) -> Vec<BreakerSnapshot> {
        self.breakers().iter().map(Breaker::snapshot).collect()
    }

    fn breakers(&self) -> Vec<Breaker> {
        self.inner.breakers.read().values().cloned().collect()
    }

    fn with(&self, name: &str, f: impl FnOnce(&Breaker)) -> Result<(), UnknownBreaker> {
        let b = self
            .get(name)
            .ok_or_else(|| UnknownBreaker(name.to_owned()))?;
        f(&b);
        Ok(())
    }

    /// Closes `name` and forgets its window.
    pub fn reset(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, Breaker::reset)
    }

    /// Opens `name` until it is reset.
    pub fn force_open(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, Breaker::force_open)
    }

    /// Lets every call of `name` through until it is reset.
    pub fn disable(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, Breaker::disable)
    }

    /// Calls `f` on every transition of every breaker of this registry (after the change).
    pub fn on_transition(&self, f: impl Fn(&Transition) + Send + Sync + 'static) {
        self.inner.listeners.write().push(Arc::new(f));
    }

    /// Whether any breaker is open, half-open or forced open (health reads this).
    pub fn any_open(&self) -> bool {
        self.breakers()
            .iter()
            .any(|b| matches!(b.state(), State::Open | State::HalfOpen | State::ForcedOpen))
    }
}

impl Collector for BreakerRegistry {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let breakers = self.breakers();
        w.family(
            "garrison_breaker_state",
            MetricType::Gauge,
            "Circuit breaker state: 1 for the current state, 0 for the others.",
        );
        for b in &breakers {
            let now = b.state();
            for s in State::ALL {
                w.sample_u64(
                    "garrison_breaker_state",
                    &[("breaker", b.name()), ("state", s.as_str())],
                    u64::from(s == now),
                );
            }
        }
        w.family(
            "garrison_breaker_calls",
            MetricType::Counter,
            "Calls seen by a circuit breaker, by outcome.",
        );
        for b in &breakers {
            for (outcome, n) in b.calls() {
                w.sample_u64(
                    "garrison_breaker_calls",
                    &[("breaker", b.name()), ("outcome", outcome)],
                    n,
                );
            }
        }
        w.family(
            "garrison_breaker_transitions",
            MetricType::Counter,
            "Circuit breaker state transitions.",
        );
        for b in &breakers {
            for from in State::ALL {
                for to in State::ALL {
                    let n = b.transitions(from, to);
                    if n > 0 {
                        w.sample_u64(
                            "garrison_breaker_transitions",
                            &[
                                ("breaker", b.name()),
                                ("from", from.as_str()),
                                ("to", to.as_str()),
                            ],
                            n,
                        );
                    }
                }
            }
        }
    }
}
