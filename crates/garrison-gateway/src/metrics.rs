//! The gateway's own metric families, beside the stack's on `/metrics`: its upstream
//! addresses (in rotation or ejected, ejections, failures in a row) and its tunnels (open
//! now, ended by how, and the bytes they carried each way); and its upstreams' check on the
//! deep health route.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use garrison::garrison_health::{BoxFuture, Check, CheckResult, Measurement};
use garrison::garrison_metrics::{Collector, MetricType, MetricWriter};

use crate::upstream::{AddressState, Upstream};

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Either side closed it.
    Closed,
    /// Either side's connection failed (a reset, say).
    Error,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The gateway shut down.
    Shutdown,
    /// The switch of protocols did not complete on one side.
    Failed,
}

impl TunnelEnd {
    const ALL: [TunnelEnd; 5] = [
        TunnelEnd::Closed,
        TunnelEnd::Error,
        TunnelEnd::Idle,
        TunnelEnd::Shutdown,
        TunnelEnd::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Error => "error",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Shutdown => "shutdown",
            TunnelEnd::Failed => "failed",
        }
    }
}

/// The tunnels of one gateway, over every generation of its configuration: tunnels outlive
/// reloads.
#[derive(Debug, Default)]
pub(crate) struct TunnelStats {
    open: AtomicU64,
    ended: [AtomicU64; TunnelEnd::ALL.len()],
    /// Bytes carried from clients to upstreams, and from upstreams to clients.
    bytes: [AtomicU64; 2],
}

impl TunnelStats {
    /// A tunnel opens: counted open until the guard is ended or dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenTunnel {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenTunnel {
            stats: self.clone(),
            end: TunnelEnd::Closed,
        }
    }

    /// `n` more bytes carried from a client to its upstream (`to_upstream`), or back.
    pub(crate) fn moved(&self, to_upstream: bool, n: u64) {
        if n > 0 {
            self.bytes[usize::from(!to_upstream)].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A tunnel that never opened.
    pub(crate) fn failed(&self) {
        self.ended[TunnelEnd::Failed as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One open tunnel, counted in [`TunnelStats`]; it ends, as [`end`](Self::end) last said,
/// when dropped.
pub(crate) struct OpenTunnel {
    stats: Arc<TunnelStats>,
    end: TunnelEnd,
}

impl OpenTunnel {
    /// How the tunnel ends.
    pub(crate) fn end(&mut self, how: TunnelEnd) {
        self.end = how;
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.stats.ended[self.end as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A family with a sample per upstream address: name, type, help, and the sample's value.
type AddressFamily = (
    &'static str,
    MetricType,
    &'static str,
    fn(&AddressState) -> u64,
);

/// Writes the gateway's families for one generation's upstreams and the gateway's tunnels.
pub(crate) struct GatewayCollector {
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    pub(crate) tunnels: Arc<TunnelStats>,
}

impl Collector for GatewayCollector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let states: Vec<_> = self
            .upstreams
            .iter()
            .map(|(name, u)| (name.as_str(), u.states()))
            .collect();
        // one family per fact of an address, each with a sample per address
        let families: [AddressFamily; 3] = [
            (
                "garrison_gateway_upstream_address_up",
                MetricType::Gauge,
                "1 while an upstream address takes requests, 0 while it is ejected.",
                |a| u64::from(a.ejected_for.is_none()),
            ),
            (
                "garrison_gateway_upstream_failures_in_a_row",
                MetricType::Gauge,
                "Consecutive failures (refused, connect or response timeouts) of an upstream address.",
                |a| u64::from(a.failures),
            ),
            (
                "garrison_gateway_upstream_ejections",
                MetricType::Counter,
                "Times an upstream address was taken out of the rotation.",
                |a| a.ejections,
            ),
        ];
        for (family, kind, help, value) in families {
            w.family(family, kind, help);
            for (name, addresses) in &states {
                for a in addresses {
                    let labels = [("upstream", *name), ("address", a.address.as_str())];
                    w.sample_u64(family, &labels, value(a));
                }
            }
        }
        let t = &self.tunnels;
        w.family(
            "garrison_gateway_tunnels_open",
            MetricType::Gauge,
            "Upgraded connections (WebSockets) open now.",
        );
        w.sample_u64(
            "garrison_gateway_tunnels_open",
            &[],
            t.open.load(Ordering::Relaxed),
        );
        w.family(
            "garrison_gateway_tunnels_ended",
            MetricType::Counter,
            "Upgraded connections (WebSockets) that ended, by how: closed by either side, \
             error, idle, shutdown, or failed (the switch did not complete).",
        );
        for end in TunnelEnd::ALL {
            w.sample_u64(
                "garrison_gateway_tunnels_ended",
                &[("end", end.as_str())],
                t.ended[end as usize].load(Ordering::Relaxed),
            );
        }
        w.family(
            "garrison_gateway_tunnel_bytes",
            MetricType::Counter,
            "Bytes carried by tunnels, by direction; counted when a tunnel ends and at each \
             of its idle checks.",
        );
        for (i, direction) in ["client_to_upstream", "upstream_to_client"]
            .into_iter()
            .enumerate()
        {
            w.sample_u64(
                "garrison_gateway_tunnel_bytes",
                &[("direction", direction)],
                t.bytes[i].load(Ordering::Relaxed),
            );
        }
    }
}

/// The deep health route's view of the upstreams: one measurement per upstream, the
/// addresses in its rotation; `warn` while some are ejected, `fail` while all are. Not
/// critical: a gateway whose upstream is down is not itself to be taken out of rotation.
pub(crate) struct UpstreamsCheck {
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
}

impl Check for UpstreamsCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let mut r = CheckResult::pass();
        for (name, u) in &self.upstreams {
            let states = u.states();
            let out: Vec<&str> = states
                .iter()
                .filter(|a| a.ejected_for.is_some())
                .map(|a| a.address.as_str())
                .collect();
            let in_rotation = states.len() - out.len();
            let mut m = Measurement::new(name.clone())
                .observed(in_rotation as u64, "addresses")
                .field("addresses_configured", states.len() as f64);
            if in_rotation == 0 {
                m = m.fail(format!("every address is ejected: {}", out.join(", ")));
            } else if !out.is_empty() {
                m = m.warn(format!("ejected: {}", out.join(", ")));
            }
            r = r.measurement(m);
        }
        Box::pin(std::future::ready(r))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;
    use garrison::garrison_core::{ManualClock, SharedClock};
    use garrison::garrison_health::Status;

    #[tokio::test]
    async fn the_upstreams_check_warns_while_some_addresses_are_out_and_fails_when_all_are() {
        let clock = Arc::new(ManualClock::default());
        let mut c = UpstreamConfig::new(Vec::<String>::new());
        c.eject_after = 1;
        let authorities = ["127.0.0.1:9001", "127.0.0.1:9002"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let u = Arc::new(Upstream::new(
            "app",
            &c,
            authorities,
            SharedClock::from_arc(clock.clone()),
        ));
        let check = UpstreamsCheck {
            upstreams: BTreeMap::from([("app".to_owned(), u.clone())]),
        };
        let app = |r: &CheckResult| r.get("app").unwrap().clone();
        let r = check.check().await;
        assert_eq!(r.status(), Status::Pass);
        u.failed(1);
        let r = check.check().await;
        assert_eq!(r.status(), Status::Warn);
        assert_eq!(app(&r).get_output(), Some("ejected: 127.0.0.1:9002"));
        u.failed(0);
        let r = check.check().await;
        assert_eq!(r.status(), Status::Fail);
        assert_eq!(
            app(&r).get_output(),
            Some("every address is ejected: 127.0.0.1:9001, 127.0.0.1:9002")
        );
        // back once their time out is over
        clock.advance(c.eject_for + std::time::Duration::from_millis(1));
        assert_eq!(check.check().await.status(), Status::Pass);
    }
}
