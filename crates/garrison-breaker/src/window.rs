//! Lock-free sliding windows. Recording is a few atomic operations on the breaker's own
//! cache lines; the rates are read only when a failure or a slow call could change the
//! verdict.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::config::Window;

pub(crate) const FAILED: u8 = 1;
pub(crate) const SLOW: u8 = 2;
const OCCUPIED: u8 = 4;
const NO_EPOCH: u64 = u64::MAX;

/// Calls, failures and slow calls in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window (a call can be both failed and slow).
    pub slow: u64,
}

impl WindowCounts {
    /// Failures per call, 0 when empty.
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }

    /// Slow calls per call, 0 when empty.
    pub fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f64 / self.calls as f64
        }
    }
}

pub(crate) enum SlidingWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

impl SlidingWindow {
    pub(crate) fn new(w: Window) -> Self {
        match w {
            Window::Count(n) => SlidingWindow::Count(CountWindow::new(n as usize)),
            Window::Time(d) => SlidingWindow::Time(TimeWindow::new(d)),
        }
    }

    #[inline]
    pub(crate) fn record(&self, outcome: u8, now_ms: u64) {
        match self {
            SlidingWindow::Count(w) => w.record(outcome),
            SlidingWindow::Time(w) => w.record(outcome, now_ms),
        }
    }

    pub(crate) fn counts(&self, now_ms: u64) -> WindowCounts {
        match self {
            SlidingWindow::Count(w) => w.counts(),
            SlidingWindow::Time(w) => w.counts(now_ms),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            SlidingWindow::Count(w) => w.reset(),
            SlidingWindow::Time(w) => w.reset(),
        }
    }
}

/// The last `n` calls: a ring of outcomes and running totals.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    fn record(&self, outcome: u8) {
        let i = self.head.fetch_add(1, Ordering::Relaxed) as usize % self.slots.len();
        let old = self.slots[i].swap(outcome | OCCUPIED, Ordering::Relaxed);
        let df = i64::from(outcome & FAILED) - i64::from(old & FAILED);
        let ds = i64::from((outcome & SLOW) >> 1) - i64::from((old & SLOW) >> 1);
        if df != 0 {
            self.failures.fetch_add(df, Ordering::Relaxed);
        }
        if ds != 0 {
            self.slow.fetch_add(ds, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> WindowCounts {
        let calls = self
            .head
            .load(Ordering::Relaxed)
            .min(self.slots.len() as u64);
        // Totals can lag a concurrent ring update by one call; clamp into range.
        let clamp = |v: i64| (v.max(0) as u64).min(calls);
        WindowCounts {
            calls,
            failures: clamp(self.failures.load(Ordering::Relaxed)),
            slow: clamp(self.slow.load(Ordering::Relaxed)),
        }
    }

    fn reset(&self) {
        self.head.store(0, Ordering::Relaxed);
        for s in self.slots.iter() {
            s.store(0, Ordering::Relaxed);
        }
        self.failures.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
    }
}

struct Bucket {
    epoch: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The calls of the last `duration`, in at most 60 buckets of at least one second. A call
/// recorded while its bucket is being recycled can be lost: the rates are exact to within
/// one call per bucket boundary.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_ms: u64,
}

impl TimeWindow {
    fn new(d: Duration) -> Self {
        let total_ms = (d.as_millis() as u64).max(1000);
        let bucket_ms = (total_ms / 60).max(1000);
        let n = total_ms.div_ceil(bucket_ms) as usize;
        Self {
            buckets: (0..n)
                .map(|_| Bucket {
                    epoch: AtomicU64::new(NO_EPOCH),
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
            bucket_ms,
        }
    }

    #[inline]
    fn record(&self, outcome: u8, now_ms: u64) {
        let epoch = now_ms / self.bucket_ms;
        let b = &self.buckets[epoch as usize % self.buckets.len()];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        if outcome & FAILED != 0 {
            b.failures.fetch_add(1, Ordering::Relaxed);
        }
        if outcome & SLOW != 0 {
            b.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self, now_ms: u64) -> WindowCounts {
        let now = now_ms / self.bucket_ms;
        let oldest = now.saturating_sub(self.buckets.len() as u64 - 1);
        let mut c = WindowCounts::default();
        for b in self.buckets.iter() {
            let e = b.epoch.load(Ordering::Acquire);
            if e != NO_EPOCH && e >= oldest && e <= now {
                c.calls += b.calls.load(Ordering::Relaxed);
                c.failures += b.failures.load(Ordering::Relaxed);
                c.slow += b.slow.load(Ordering::Relaxed);
            }
        }
        c.failures = c.failures.min(c.calls);
        c.slow = c.slow.min(c.calls);
        c
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.epoch.store(NO_EPOCH, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_forgets_the_oldest_call() {
        let w = CountWindow::new(4);
        for o in [FAILED, FAILED, 0, SLOW] {
            w.record(o);
        }
        assert_eq!(
            w.counts(),
            WindowCounts {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
        w.record(0); // pushes out the first failure
        w.record(0); // and the second
        assert_eq!(
            w.counts(),
            WindowCounts {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(), WindowCounts::default());
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(Duration::from_secs(3));
        w.record(FAILED, 0);
        w.record(0, 500);
        w.record(FAILED | SLOW, 1_200);
        assert_eq!(
            w.counts(1_500),
            WindowCounts {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // at 3.0 s the bucket of second 0 has left the window
        assert_eq!(
            w.counts(3_000),
            WindowCounts {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
        // second 3 reuses the slot of second 0
        w.record(0, 3_100);
        assert_eq!(
            w.counts(3_100),
            WindowCounts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts(10_000), WindowCounts::default());
    }

    #[test]
    fn long_time_windows_use_at_most_60_buckets() {
        let w = TimeWindow::new(Duration::from_secs(600));
        assert_eq!(w.buckets.len(), 60);
        assert_eq!(w.bucket_ms, 10_000);
    }
}
