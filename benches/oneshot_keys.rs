//! A flood of one-request clients against the in-memory limiter (issue 37): every request
//! has a key never seen before, under the default policies (`general` 100 per minute,
//! `auth`, `upload`) and the default `max_keys` (1 000 000) and sweep interval (10 s). It
//! prints the share refused (goal: 0 while the active keys fit in `max_keys`), the share the
//! overflow buckets decided, and the keys tracked.
//!
//!   cargo bench -p garrison-workspace --bench oneshot_keys -- [RATE per second] [SECONDS]
//!
//! RATE 0 runs at full speed (then the active keys, rate × 0.6 s, may pass `max_keys`, and
//! overflow is the right answer). Defaults: 39 000 new keys a second for 20 s.

use std::time::{Duration, Instant};

use garrison_ratelimit::{ClientKey, Policy, RateLimitLayer};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let rate: u64 = args.next().map_or(39_000, |a| a.parse().expect("RATE"));
    let seconds: u64 = args.next().map_or(20, |a| a.parse().expect("SECONDS"));
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .policy(Policy::new("auth", 5, Duration::from_secs(900)))
        .policy(Policy::new("upload", 10, Duration::from_secs(300)))
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut next_sweep = start + Duration::from_secs(10);
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut key = 0x9E37_79B9_7F4A_7C15u64;
    let mut last_report = start;
    while Instant::now() < end {
        // a batch of 1 ms worth of requests, then wait for the clock to catch up
        let batch = if rate == 0 {
            10_000
        } else {
            rate.div_ceil(1000)
        };
        for _ in 0..batch {
            key ^= key << 13;
            key ^= key >> 7;
            key ^= key << 17;
            if !limiter
                .check("general", ClientKey(key))
                .unwrap()
                .is_allowed()
            {
                refused += 1;
            }
            sent += 1;
        }
        if let Some(nanos) = (sent * 1_000_000_000).checked_div(rate) {
            let due = start + Duration::from_nanos(nanos);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if Instant::now() >= next_sweep {
            limiter.sweep();
            next_sweep += Duration::from_secs(10);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "{:>4.0} s: {sent} sent, {refused} refused, {} keys tracked",
                start.elapsed().as_secs_f64(),
                limiter.tracked_keys()
            );
        }
    }
    limiter.sweep();
    let took = start.elapsed().as_secs_f64();
    println!(
        "{sent} one-request keys in {took:.1} s ({:.0} new keys/s): {refused} refused ({:.3}%), overflow share over the last sweep interval {:.3}%, {} keys tracked at the end, {:.1} MB",
        sent as f64 / took,
        100.0 * refused as f64 / sent as f64,
        100.0 * limiter.overflow_share("general").unwrap(),
        limiter.tracked_keys(),
        limiter.memory_bytes() as f64 / 1e6,
    );
}
