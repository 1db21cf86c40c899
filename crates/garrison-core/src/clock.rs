use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source of monotonic time. Layers read time only through a clock, so tests can drive time
/// with tokio's paused clock ([`TokioClock`]) or by hand ([`ManualClock`]).
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock, [`Instant::now`]. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Tokio's clock, [`tokio::time::Instant::now`]: it follows `tokio::time::pause()` and
/// `advance()` in tests (with tokio's `test-util` feature) and is the system clock otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_nanos: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the instant it was made.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// How far the clock has moved since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// A clock a layer can hold: the system clock without any indirection, or any [`Clock`].
#[derive(Clone, Default)]
pub struct SharedClock(Inner);

#[derive(Clone, Default)]
enum Inner {
    #[default]
    System,
    Custom(Arc<dyn Clock>),
}

impl SharedClock {
    /// The system clock (the default).
    pub fn system() -> Self {
        Self(Inner::System)
    }

    /// Any clock.
    pub fn new<C: Clock>(clock: C) -> Self {
        Self(Inner::Custom(Arc::new(clock)))
    }

    /// A clock that is already shared, such as an `Arc<ManualClock>` the test keeps a handle
    /// to.
    pub fn from_arc(clock: Arc<dyn Clock>) -> Self {
        Self(Inner::Custom(clock))
    }

    /// Whether `other` is this very clock (both the system clock, or clones of one custom
    /// clock): an instant read from one can stand for a reading of the other.
    ///
    /// ```
    /// use garrison_core::{ManualClock, SharedClock};
    ///
    /// let manual = SharedClock::new(ManualClock::new());
    /// assert!(SharedClock::system().same_as(&SharedClock::system()));
    /// assert!(manual.same_as(&manual.clone()));
    /// assert!(!manual.same_as(&SharedClock::system()));
    /// assert!(!manual.same_as(&SharedClock::new(ManualClock::new())));
    /// ```
    pub fn same_as(&self, other: &SharedClock) -> bool {
        match (&self.0, &other.0) {
            (Inner::System, Inner::System) => true,
            (Inner::Custom(a), Inner::Custom(b)) => {
                std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
            }
            _ => false,
        }
    }

    /// The current instant.
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.0 {
            Inner::System => Instant::now(),
            Inner::Custom(c) => c.now(),
        }
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Inner::System => f.write_str("SharedClock(System)"),
            Inner::Custom(_) => f.write_str("SharedClock(Custom)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Arc::new(ManualClock::new());
        let shared = SharedClock::from_arc(c.clone());
        let t0 = shared.now();
        assert_eq!(shared.now(), t0);
        c.advance(Duration::from_millis(250));
        assert_eq!(shared.now() - t0, Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = SharedClock::new(TokioClock);
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(c.now() - t0, Duration::from_secs(3));
    }
}
