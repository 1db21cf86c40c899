//! At most one log event per interval, for events that come in floods (refusals, sheds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lets one event through per interval and counts the ones it holds back, so that a flood of
/// `429`s or sheds makes one log line a second that says how many it stands for.
///
/// Times are nanoseconds of any monotonic clock the caller reads (a layer's own, so that
/// tests drive it with a paused or manual clock).
///
/// ```
/// use std::time::Duration;
/// use garrison_core::LogEvery;
///
/// let every = LogEvery::new(Duration::from_secs(1));
/// assert_eq!(every.admit(0), Some(0));
/// assert_eq!(every.admit(500_000_000), None); // held back
/// assert_eq!(every.admit(900_000_000), None);
/// assert_eq!(every.admit(1_000_000_000), Some(2)); // and the two held back since
/// ```
#[derive(Debug)]
pub struct LogEvery {
    every: u64,
    /// The earliest time (plus one, so that 0 means "now") the next event goes through.
    next: AtomicU64,
    held: AtomicU64,
}

impl LogEvery {
    /// One event per `every` at most.
    pub fn new(every: Duration) -> Self {
        Self {
            every: u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
            next: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Whether an event at `now_nanos` is logged: `Some(events held back since the last one
    /// logged)`, or `None` when it is held back (and counted).
    #[inline]
    pub fn admit(&self, now_nanos: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        let due = next == 0 || now_nanos >= next - 1;
        if due {
            let after = now_nanos.saturating_add(self.every).saturating_add(1);
            if self
                .next
                .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some(self.held.swap(0, Ordering::Relaxed));
            }
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_with_the_count_held_back() {
        let e = LogEvery::new(Duration::from_millis(100));
        let ms = 1_000_000;
        assert_eq!(e.admit(5 * ms), Some(0));
        for t in 6..105 {
            assert_eq!(e.admit(t * ms), None, "{t} ms");
        }
        assert_eq!(e.admit(105 * ms), Some(99));
        assert_eq!(e.admit(106 * ms), None);
        assert_eq!(e.admit(10_000 * ms), Some(1));
    }
}
