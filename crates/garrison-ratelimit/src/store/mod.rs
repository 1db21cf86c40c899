//! Where GCRA states live: this process's memory, or a store that every replica shares
//! (Redis). The limiter asks a [`Store`] for each request and does not know which it is.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use garrison_core::{SharedClock, Tick};
use garrison_metrics::MetricWriter;

use crate::gcra::Decision;
use crate::policy::Quota;
use crate::ClientKey;

/// One request for a store to decide.
#[derive(Clone, Copy, Debug)]
// without the `redis` feature, the memory store is the only one, and it needs less
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Ask<'a> {
    /// The policy's index in the limiter.
    pub(crate) policy: usize,
    /// The policy's name (a shared store keys by it).
    pub(crate) name: &'a str,
    pub(crate) quota: &'a Quota,
    pub(crate) key: ClientKey,
    /// The policy counts every request in one bucket.
    pub(crate) global: bool,
    /// Nanoseconds on the limiter's clock.
    pub(crate) now: u64,
}

/// A store's answer.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Answer {
    Decided(Decision),
    /// The store cannot decide now (a shared store that cannot be reached).
    Failed(Fallback),
    /// The store must be asked over the network first.
    Waiting(Waiting),
}

/// What decides when a shared store cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Fallback {
    /// This process's memory store.
    Memory,
    /// Nobody: refuse with `503`, to be retried after this long.
    Refuse(Duration),
}

/// A decision on its way from a shared store.
pub(crate) type Waiting = Pin<Box<dyn Future<Output = Result<Decision, Fallback>> + Send>>;

/// Keeps the GCRA state of every key and decides each request against it.
pub(crate) trait Store: Send + Sync + 'static {
    /// Decides `ask`; `clock` reads the limiter's time for a decision that completes later.
    fn decide(&self, ask: Ask<'_>, clock: &Nanos) -> Answer;

    /// Writes the store's own metric families (calls, availability, fallbacks).
    fn collect(&self, _w: &mut MetricWriter<'_>) {}
}

/// The limiter's time: nanoseconds since it was built, never 0 (so that 0 can mean "no
/// state").
#[derive(Clone, Debug)]
pub(crate) struct Nanos {
    clock: SharedClock,
    epoch: Tick,
}

impl Nanos {
    pub(crate) fn new(clock: SharedClock) -> Self {
        Self {
            epoch: clock.tick(),
            clock,
        }
    }

    /// Now.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.at(self.clock.tick())
    }

    /// `t`, a tick of the clock.
    #[inline]
    pub(crate) fn at(&self, t: Tick) -> u64 {
        t.nanos_since(self.epoch).saturating_add(1)
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }
}
