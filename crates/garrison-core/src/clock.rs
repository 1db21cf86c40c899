use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

/// An instant of a [`SharedClock`], as nanoseconds since the clock's epoch: what the layers'
/// hot paths measure with, since it is read, compared and subtracted as one integer.
///
/// Ticks of one clock (or of clocks that are [`same_as`](SharedClock::same_as) each other)
/// compare; ticks of different clocks do not.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use garrison_core::{ManualClock, SharedClock};
///
/// let manual = Arc::new(ManualClock::new());
/// let clock = SharedClock::from_arc(manual.clone());
/// let t0 = clock.tick();
/// manual.advance(Duration::from_millis(1500));
/// let t1 = clock.tick();
/// assert_eq!(t1.saturating_since(t0), Duration::from_millis(1500));
/// assert_eq!(t0.saturating_since(t1), Duration::ZERO);
/// assert_eq!(t0.saturating_add(Duration::from_millis(1500)), t1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// The tick `nanos` nanoseconds after the clock's epoch.
    #[inline]
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the clock's epoch.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Nanoseconds from `earlier` to `self`; 0 if `earlier` is later.
    #[inline]
    pub const fn nanos_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    #[inline]
    pub const fn saturating_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }

    /// `by` after `self` (the last tick there is, if that is further than 584 years).
    #[inline]
    pub fn saturating_add(self, by: Duration) -> Tick {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(by))
    }
}

/// How the system clock is read for [`SharedClock::tick`].
enum SystemTicks {
    /// The CPU's time-stamp counter, scaled to nanoseconds (`quanta`), where the kernel
    /// keeps time with it too: a read costs a few nanoseconds, not a call into the vDSO.
    Counter { clock: quanta::Clock, base: u64 },
    /// [`Instant::now`], everywhere else.
    Std { base: Instant },
}

impl SystemTicks {
    fn get() -> &'static SystemTicks {
        static TICKS: OnceLock<SystemTicks> = OnceLock::new();
        TICKS.get_or_init(|| {
            if counter_keeps_time() {
                // `new` calibrates the counter against the monotonic clock (once per
                // process, up to 200 ms): done when a layer is built, not on a request
                let clock = quanta::Clock::new();
                let base = clock.raw();
                SystemTicks::Counter { clock, base }
            } else {
                SystemTicks::Std {
                    base: Instant::now(),
                }
            }
        })
    }

    #[inline]
    fn now(&self) -> Tick {
        match self {
            SystemTicks::Counter { clock, base } => Tick(clock.delta_as_nanos(*base, clock.raw())),
            SystemTicks::Std { base } => {
                Tick(u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Whether the CPU's counter is safe to time with. On Linux, only where the kernel keeps its
/// own time with that counter (`tsc` on x86-64, `arch_sys_counter` on AArch64): the kernel
/// leaves the counter when it finds it unstable, as on some virtual machines. Elsewhere
/// `quanta` decides: on x86-64 it asks the CPU for an invariant counter and otherwise reads
/// the monotonic clock itself.
fn counter_keeps_time() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let wanted = if cfg!(target_arch = "x86_64") {
        "tsc"
    } else if cfg!(target_arch = "aarch64") {
        "arch_sys_counter"
    } else {
        return false;
    };
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == wanted)
}

/// The instant from which ticks of custom clocks count: up to 136 years before the first
/// tick of one (as far back as the platform's instants go), so that a custom clock's readings
/// (a [`ManualClock`] made before any layer, tokio's paused clock) all come after it, and
/// ticks still have centuries of room in 64 bits of nanoseconds.
fn custom_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        let mut back = Duration::from_secs(1 << 32);
        loop {
            if let Some(t) = now.checked_sub(back) {
                return t;
            }
            if back.is_zero() {
                return now;
            }
            back /= 2;
        }
    })
}

/// A clock a layer can hold: the system clock without any indirection, or any [`Clock`].
#[derive(Clone)]
pub struct SharedClock(Inner);

#[derive(Clone)]
enum Inner {
    /// The system clock, with its tick source (read without a check of its `OnceLock`).
    System(&'static SystemTicks),
    Custom(Arc<dyn Clock>),
}

impl Default for SharedClock {
    /// The system clock.
    fn default() -> Self {
        Self::system()
    }
}

impl SharedClock {
    /// The system clock (the default). The first call in a process calibrates the clock's
    /// tick source (see [`tick`](Self::tick)).
    pub fn system() -> Self {
        Self(Inner::System(SystemTicks::get()))
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
            (Inner::System(_), Inner::System(_)) => true,
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
            Inner::System(_) => Instant::now(),
            Inner::Custom(c) => c.now(),
        }
    }

    /// The current [`Tick`]. For the system clock it is read from the CPU's counter, scaled
    /// to nanoseconds, where that counter keeps steady time (on Linux: where the kernel's
    /// clocksource is that counter, `tsc` or `arch_sys_counter`), else from the monotonic
    /// clock; for a custom clock it is [`Clock::now`] counted from an epoch shared by all
    /// custom clocks.
    #[inline]
    pub fn tick(&self) -> Tick {
        match &self.0 {
            Inner::System(ticks) => ticks.now(),
            Inner::Custom(c) => {
                let since = c.now().saturating_duration_since(custom_epoch());
                Tick(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
            }
        }
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Inner::System(_) => f.write_str("SharedClock(System)"),
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

    #[test]
    fn system_ticks_move_forward_with_the_system_clock() {
        let c = SharedClock::system();
        // each tick is read between two readings of `Instant`: the stretch the ticks measure
        // lies between the shortest and the longest stretch those readings allow, however
        // long the thread is kept off the CPU between them (within 1% for the counter's
        // calibration, and a microsecond for the clocks' resolution)
        let bracket = || {
            let before = Instant::now();
            let t = c.tick();
            (before, t, Instant::now())
        };
        let (b0, t0, a0) = bracket();
        let mut spins = 0u64;
        while a0.elapsed() < Duration::from_millis(20) {
            spins = std::hint::black_box(spins + 1);
        }
        let (b1, t1, a1) = bracket();
        assert!(t1 > t0);
        let ticks = t1.saturating_since(t0);
        let (shortest, longest) = (b1 - a0, a1 - b0);
        let slack = Duration::from_micros(1);
        assert!(
            ticks + slack >= shortest.mul_f64(0.99) && ticks <= longest.mul_f64(1.01) + slack,
            "ticks {ticks:?}, Instant between {shortest:?} and {longest:?}"
        );
        assert!(SharedClock::default().same_as(&c));
    }

    #[test]
    fn custom_clock_ticks_count_its_own_time() {
        // a clock made before any layer still ticks forward from its first reading
        let manual = Arc::new(ManualClock::new());
        let a = SharedClock::from_arc(manual.clone());
        let b = SharedClock::from_arc(manual.clone());
        let t0 = a.tick();
        assert!(t0 > Tick::default());
        assert_eq!(b.tick(), t0, "two handles of one clock tick alike");
        manual.advance(Duration::from_nanos(1));
        assert_eq!(a.tick().nanos_since(t0), 1);
        manual.advance(Duration::from_secs(3600));
        assert_eq!(
            b.tick().saturating_since(t0),
            Duration::from_nanos(3_600_000_000_001)
        );
        assert_eq!(
            Tick::from_nanos(u64::MAX)
                .saturating_add(Duration::MAX)
                .as_nanos(),
            u64::MAX
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = SharedClock::new(TokioClock);
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(c.now() - t0, Duration::from_secs(3));
    }
}
