//! One million distinct client keys fit in the documented bound, and the memory comes back
//! when they go idle. Measured by counting every allocation of this test binary.

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use garrison_core::{ManualClock, SharedClock};
use garrison_ratelimit::{ClientKey, Policy, RateLimitLayer, BYTES_PER_KEY_MAX};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

fn live() -> isize {
    ALLOC.allocated() as isize
}

const MB: isize = 1 << 20;

#[test]
fn a_million_random_keys_fit_under_64_mb_and_the_memory_returns() {
    let clock = std::sync::Arc::new(ManualClock::new());
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_second("general", 10))
        .clock(SharedClock::new(clock.clone()))
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let base = live();

    // A million random keys (an attacker rotating addresses), all active: the bound is a
    // million keys over every policy, and this one policy may use all of it.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..1_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        limiter.check("general", ClientKey(x)).unwrap();
    }
    let tracked = limiter.tracked_keys();
    let used = live() - base;
    eprintln!(
        "1,000,000 keys: {tracked} tracked, {:.1} MiB allocated, {:.1} bytes a key",
        used as f64 / MB as f64,
        used as f64 / tracked as f64
    );
    assert!(tracked > 990_000, "only {tracked} keys tracked");
    assert!(used < 64 * MB, "{used} bytes for a million keys");
    assert!(
        used as usize <= tracked * BYTES_PER_KEY_MAX,
        "the documented bound of {BYTES_PER_KEY_MAX} bytes a key does not hold"
    );

    // More keys than the bound: the table does not grow past it.
    for _ in 0..500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        limiter.check("general", ClientKey(x)).unwrap();
    }
    assert!(limiter.tracked_keys() <= 1_000_000 + 64);
    assert!(live() - base < 64 * MB);

    // 100 ms later every key is whole again: a sweep drops them and gives the memory back.
    clock.advance(Duration::from_millis(100));
    assert!(limiter.sweep() >= 990_000);
    let left = live() - base;
    eprintln!("after the sweep: {:.2} MiB", left as f64 / MB as f64);
    assert_eq!(limiter.tracked_keys(), 0);
    assert!(
        left < MB,
        "{left} bytes still held after every key went idle"
    );
}
