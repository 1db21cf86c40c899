//! The in-memory limiter's decision against governor's keyed limiter, for the choice of the
//! algorithm crate (`docs/performance.md`, "Why the limiter is not governor").
//!
//! ```text
//! cargo bench -p garrison-workspace --bench governor --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect=governor::decisions \
//!     --callgrind-out-file=/dev/null target/release/deps/governor-* garrison 200000
//! target/release/deps/governor-* garrison_memory 1000000
//! ```
//!
//! `garrison`/`governor` make N decisions over 10 000 known keys (instructions per decision:
//! the difference of two runs over the difference of their N). `*_memory` admits N distinct
//! keys and prints the resident memory they took.

use std::hint::black_box;
use std::num::NonZeroU32;

use garrison_ratelimit::{ClientKey, Policy, RateLimitLayer};

/// `n` decisions over `distinct` keys, spread over the key space.
#[inline(never)]
fn decisions(n: u64, distinct: u64, mut decide: impl FnMut(u64) -> bool) -> u64 {
    let mut allowed = 0;
    for i in 0..n {
        let key = black_box(i % distinct).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        allowed += u64::from(decide(key));
    }
    allowed
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let which = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 1_000_000))
        .max_keys(2_000_000)
        .build()
        .expect("layer");
    let ours = layer.limiter().clone();
    let quota = governor::Quota::per_minute(NonZeroU32::new(1_000_000).unwrap());
    let theirs = governor::RateLimiter::<u64, _, _>::keyed(quota);
    let before = resident_bytes();
    let distinct = if which.ends_with("memory") { n } else { 10_000 };
    let allowed = match which.as_str() {
        "garrison" | "garrison_memory" => decisions(n, distinct, |k| {
            ours.check("general", ClientKey(k))
                .is_some_and(|d| d.is_allowed())
        }),
        "governor" | "governor_memory" => decisions(n, distinct, |k| theirs.check_key(&k).is_ok()),
        _ => {
            eprintln!("usage: governor <garrison|governor|garrison_memory|governor_memory> [n]");
            return;
        }
    };
    if which.ends_with("memory") {
        println!(
            "{which}: {} keys, {:.1} MB resident for them",
            ours.tracked_keys().max(theirs.len()),
            (resident_bytes().saturating_sub(before)) as f64 / 1e6
        );
    }
    black_box(allowed);
}
