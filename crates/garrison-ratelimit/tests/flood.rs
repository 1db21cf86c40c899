//! A flood of one-request clients through the layer, on a manual clock: IPv6 clients keyed by
//! their /64, each prefix new, arriving faster than the sweep interval. While the active
//! prefixes fit in `max_keys`, none of them meets the overflow bucket.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_core::{ManualClock, SharedClock};
use garrison_ratelimit::{PeerAddr, Policy, RateLimitLayer};
use http::{Request, StatusCode};
use tower::ServiceExt;

#[tokio::test]
async fn a_flood_of_new_ipv6_prefixes_is_served_while_the_active_ones_fit() {
    let clock = Arc::new(ManualClock::new());
    // 640 keys at most; 10 per second: a one-request client is active for 100 ms
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_second("general", 10))
        .max_keys(640)
        .sweep_interval(Duration::from_secs(10))
        .clock(SharedClock::new(clock.clone()))
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    // a new /64 every millisecond (two addresses of it: one client), for 5 s
    for i in 0..5_000u64 {
        clock.advance(Duration::from_millis(1));
        let prefix = 0x2001_0db8_0000_0000u64 | i.wrapping_mul(0x9E37_79B9) & 0xffff_ffff;
        for host in [1u64, 2] {
            let ip = Ipv6Addr::from((u128::from(prefix) << 64) | u128::from(host));
            let mut req = Request::get("/").body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(PeerAddr(SocketAddr::new(ip.into(), 4000)));
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "prefix {i} refused");
        }
    }
    assert!(limiter.tracked_keys() <= 640, "{}", limiter.tracked_keys());
    // the same flood, all at one instant: more active prefixes than max_keys, so newcomers
    // share the overflow buckets, and the table stays within its bound
    let mut refused = 0;
    for i in 0..5_000u64 {
        let ip = Ipv6Addr::from((0x2001_0db9u128 << 96) | (u128::from(i) << 64) | 1);
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip.into(), 4000)));
        if app.clone().oneshot(req).await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(refused > 0, "the overflow buckets refused nothing");
    assert!(limiter.tracked_keys() <= 640, "{}", limiter.tracked_keys());
    limiter.sweep();
    assert!(limiter.is_overflowing());
}
