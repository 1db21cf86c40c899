//! Upstreams: addresses taken in turn, and passive ejection of an address that keeps
//! failing.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use garrison::garrison_core::SharedClock;
use http::uri::Authority;

use crate::config::{HostMode, UpstreamConfig, UpstreamProtocol};

/// One upstream: its addresses and how each is doing.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    addresses: Vec<Address>,
    next: AtomicUsize,
    clock: SharedClock,
    base: Instant,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) tunnel_idle_timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) host: HostMode,
    eject_after: u32,
    eject_for: Duration,
}

#[derive(Debug)]
struct Address {
    authority: Authority,
    /// Failures in a row.
    failures: AtomicU32,
    /// Milliseconds after `base` until which the address is out; 0: in.
    ejected_until: AtomicU64,
    ejections: AtomicU64,
}

/// How one address is doing, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressState {
    /// `host:port`.
    pub address: String,
    /// Failures in a row.
    pub failures: u32,
    /// Time left out of the rotation.
    pub ejected_for: Option<Duration>,
    /// Times ejected since start.
    pub ejections: u64,
}

impl Upstream {
    /// An upstream of `config`, whose addresses are already resolved to authorities (the
    /// demo address replaced by the demo service's).
    pub(crate) fn new(
        name: &str,
        config: &UpstreamConfig,
        authorities: Vec<Authority>,
        clock: SharedClock,
    ) -> Self {
        let base = clock.now();
        Self {
            name: name.to_owned(),
            addresses: authorities
                .into_iter()
                .map(|authority| Address {
                    authority,
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            clock,
            base,
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            body_idle_timeout: config.body_idle_timeout,
            host: config.host,
            eject_after: config.eject_after,
            eject_for: config.eject_for,
        }
    }

    /// The name in `[gateway.upstreams]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        self.clock
            .now()
            .saturating_duration_since(self.base)
            .as_millis() as u64
    }

    /// The next address in turn that is not ejected (`avoid` is skipped when another is
    /// in); when every address is out, the one whose ejection ends first, so that requests
    /// still find out when an upstream comes back.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> (usize, &Authority) {
        let n = self.addresses.len();
        // one address: no counter shared by every worker to write
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        if avoid.is_none() {
            // the common case, no address out: no clock read
            let at = start % n;
            if self.addresses[at].ejected_until.load(Ordering::Relaxed) == 0 {
                return (at, &self.addresses[at].authority);
            }
        }
        let now = self.now_ms();
        let mut fallback = (u64::MAX, 0);
        for i in 0..n {
            let at = (start + i) % n;
            let until = self.addresses[at].ejected_until.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                // back in: later picks need no clock read (unless it was ejected again)
                let _ = self.addresses[at].ejected_until.compare_exchange(
                    until,
                    0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            if until <= now && Some(at) != avoid {
                return (at, &self.addresses[at].authority);
            }
            if Some(at) != avoid || n == 1 {
                fallback = fallback.min((until, at));
            }
        }
        let at = if fallback.0 == u64::MAX {
            avoid.unwrap_or(0)
        } else {
            fallback.1
        };
        (at, &self.addresses[at].authority)
    }

    /// The address answered: its failure count starts again.
    pub(crate) fn succeeded(&self, at: usize) {
        let a = &self.addresses[at];
        if a.failures.load(Ordering::Relaxed) != 0 {
            a.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The address failed (refused, timed out): after `eject_after` in a row it is out for
    /// `eject_for`.
    pub(crate) fn failed(&self, at: usize) {
        let a = &self.addresses[at];
        let n = a.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.eject_after > 0 && n >= self.eject_after {
            a.failures.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.eject_for.as_millis() as u64;
            a.ejected_until.store(until.max(1), Ordering::Relaxed);
            a.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                address = %a.authority,
                failures = n,
                eject_for = ?self.eject_for,
                "upstream address ejected"
            );
        }
    }

    /// Whether more than one address could take a retried request.
    pub(crate) fn has_alternatives(&self) -> bool {
        self.addresses.len() > 1
    }

    /// Every address and how it is doing.
    pub fn states(&self) -> Vec<AddressState> {
        let now = self.now_ms();
        self.addresses
            .iter()
            .map(|a| {
                let until = a.ejected_until.load(Ordering::Relaxed);
                AddressState {
                    address: a.authority.to_string(),
                    failures: a.failures.load(Ordering::Relaxed),
                    ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
                    ejections: a.ejections.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garrison::garrison_core::ManualClock;
    use std::sync::Arc;

    fn upstream(n: u16, clock: &Arc<ManualClock>) -> Upstream {
        let mut c = UpstreamConfig::new(Vec::<String>::new());
        c.eject_after = 2;
        c.eject_for = Duration::from_secs(10);
        let authorities = (0..n)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        Upstream::new("u", &c, authorities, SharedClock::from_arc(clock.clone()))
    }

    #[test]
    fn addresses_are_taken_in_turn() {
        let clock = Arc::new(ManualClock::new());
        let u = upstream(3, &clock);
        let picked: Vec<usize> = (0..6).map(|_| u.pick(None).0).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn an_address_failing_in_a_row_is_ejected_for_a_while_then_comes_back() {
        let clock = Arc::new(ManualClock::new());
        let u = upstream(2, &clock);
        u.failed(1);
        u.succeeded(1); // not in a row
        u.failed(1);
        assert!(u.states()[1].ejected_for.is_none());
        u.failed(1);
        assert_eq!(u.states()[1].ejected_for, Some(Duration::from_secs(10)));
        assert_eq!(u.states()[1].ejections, 1);
        assert!(
            (0..10).all(|_| u.pick(None).0 == 0),
            "the ejected address is skipped"
        );
        clock.advance(Duration::from_secs(10));
        let picked: Vec<usize> = (0..4).map(|_| u.pick(None).0).collect();
        assert!(picked.contains(&1), "back in the rotation: {picked:?}");
    }

    #[test]
    fn with_every_address_out_the_one_back_soonest_is_tried() {
        let clock = Arc::new(ManualClock::new());
        let u = upstream(2, &clock);
        u.failed(0);
        u.failed(0);
        clock.advance(Duration::from_secs(1));
        u.failed(1);
        u.failed(1);
        assert!((0..4).all(|_| u.pick(None).0 == 0));
    }

    #[test]
    fn a_retry_avoids_the_address_that_just_failed() {
        let clock = Arc::new(ManualClock::new());
        let u = upstream(2, &clock);
        assert!((0..4).all(|_| u.pick(Some(0)).0 == 1));
        let one = upstream(1, &clock);
        assert_eq!(one.pick(Some(0)).0, 0, "a single address is all there is");
    }
}
