//! The generic cell rate algorithm, in integer nanoseconds.
//!
//! A key's whole state is its theoretical arrival time (TAT): the time at which its bucket
//! would be full again. A request at `now` may pass when, after adding one emission interval,
//! the TAT runs at most `tolerance` ahead of `now`. A state whose TAT lies in the past is the
//! same as no state at all, which is what makes evicting idle keys lossless.

use std::time::Duration;

use crate::policy::Quota;

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) remaining: u32,
    pub(crate) reset: u64,
    pub(crate) retry_after: u64,
}

impl Decision {
    /// Whether the request may pass.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Requests the key may still send at once.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the key's allowance is whole again.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// For a refused request: time until one request would pass. Zero when allowed.
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after)
    }

    /// Whole seconds until the allowance is whole again, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// Whole seconds to wait before retrying, rounded up: never 0 when a wait is needed.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }
}

pub(crate) fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

/// What taking up to `want` requests from a key would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Take {
    pub(crate) granted: u32,
    /// The new TAT to store, when anything was granted.
    pub(crate) new_tat: Option<u64>,
    pub(crate) decision: Decision,
}

/// Takes up to `want` (at least 1) requests from a key whose stored TAT is `stored` (0: no
/// state) at time `now`. Grants as many as fit; a refusal leaves the state unchanged.
pub(crate) fn take(q: &Quota, stored: u64, now: u64, want: u32) -> Take {
    let tat = stored.max(now);
    let ahead = tat - now;
    let room = q.tolerance.saturating_sub(ahead) / q.emission;
    let granted = room.min(u64::from(want.max(1))) as u32;
    if granted == 0 {
        return Take {
            granted: 0,
            new_tat: None,
            decision: Decision {
                allowed: false,
                remaining: 0,
                reset: ahead,
                retry_after: (ahead + q.emission).saturating_sub(q.tolerance).max(1),
            },
        };
    }
    let new_tat = tat + u64::from(granted) * q.emission;
    let ahead = new_tat - now;
    Take {
        granted,
        new_tat: Some(new_tat),
        decision: Decision {
            allowed: true,
            remaining: ((q.tolerance - ahead) / q.emission) as u32,
            reset: ahead,
            retry_after: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        // 10 per 10 s: one every second, 10 at once.
        let q = Policy::new("p", 10, Duration::from_secs(10)).quota();
        let mut tat = 0;
        for i in 0..10u32 {
            let t = take(&q, tat, 100 * S, 1);
            assert!(t.decision.allowed);
            assert_eq!(t.decision.remaining, 9 - i);
            assert_eq!(t.decision.reset, u64::from(i + 1) * S);
            tat = t.new_tat.unwrap();
        }
        let t = take(&q, tat, 100 * S, 1);
        assert!(!t.decision.allowed);
        assert_eq!(t.new_tat, None);
        assert_eq!(t.decision.retry_after, S);
        assert_eq!(t.decision.reset, 10 * S);
        // Half a second later: half a second to wait, announced as 1 s.
        let t = take(&q, tat, 100 * S + S / 2, 1);
        assert_eq!(t.decision.retry_after, S / 2);
        assert_eq!(t.decision.retry_after_secs(), 1);
        // One second later: exactly one more.
        let t = take(&q, tat, 101 * S, 1);
        assert!(t.decision.allowed);
        assert_eq!(t.decision.remaining, 0);
    }

    #[test]
    fn batches_grant_what_fits() {
        let q = Policy::new("p", 10, Duration::from_secs(10)).quota();
        let t = take(&q, 0, 5 * S, 4);
        assert_eq!((t.granted, t.decision.remaining), (4, 6));
        let t2 = take(&q, t.new_tat.unwrap(), 5 * S, 100);
        assert_eq!((t2.granted, t2.decision.remaining), (6, 0));
        assert_eq!(take(&q, t2.new_tat.unwrap(), 5 * S, 3).granted, 0);
    }

    /// The same decisions as the governor crate, request for request, on random arrivals.
    #[test]
    fn agrees_with_governor() {
        use governor::clock::FakeRelativeClock;
        use governor::{Quota as GQuota, RateLimiter};
        use std::num::NonZeroU32;

        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for (limit, period_ms, burst) in [
            (5, 900_000, 5),
            (100, 60_000, 100),
            (10, 300_000, 2),
            (7, 1000, 3),
        ] {
            let p = Policy::new("p", limit, Duration::from_millis(period_ms)).burst(burst);
            let q = p.quota();
            let clock = FakeRelativeClock::default();
            let g = RateLimiter::direct_with_clock(
                GQuota::with_period(p.emission_interval())
                    .unwrap()
                    .allow_burst(NonZeroU32::new(burst).unwrap()),
                clock.clone(),
            );
            let mut tat = 0;
            let mut now = 1;
            for _ in 0..5_000 {
                let step = rand(q.emission / 2 + 1);
                now += step;
                clock.advance(Duration::from_nanos(step));
                let ours = take(&q, tat, now, 1);
                let theirs = g.check();
                assert_eq!(ours.decision.allowed, theirs.is_ok(), "{p:?} at {now}");
                if let Err(not_until) = theirs {
                    use governor::clock::Clock as _;
                    assert_eq!(
                        ours.decision.retry_after,
                        not_until.wait_time_from(clock.now()).as_nanos() as u64
                    );
                }
                if let Some(t) = ours.new_tat {
                    tat = t;
                }
            }
        }
    }
}
