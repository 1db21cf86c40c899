//! Random trace and span ids from a per-thread generator (wyrand, seeded from the OS).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::num::{NonZeroU128, NonZeroU64};

use garrison_core::TraceId;

use crate::w3c::SpanId;

thread_local! {
    // const: no lazy initialisation to check on every id; 0 means not seeded yet
    static STATE: Cell<u64> = const { Cell::new(0) };
}

fn seed() -> u64 {
    // RandomState is seeded by the OS once per process and differs per instance
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() | 1
}

/// wyrand: fast, and good enough for ids (not for secrets).
#[inline]
fn next() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        let x = x.wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// A new random trace id.
#[inline]
pub fn trace_id() -> TraceId {
    loop {
        let v = (u128::from(next()) << 64) | u128::from(next());
        if let Some(v) = NonZeroU128::new(v) {
            return TraceId::from_bytes(v.get().to_be_bytes()).expect("non-zero");
        }
    }
}

/// A new random span id.
#[inline]
pub fn span_id() -> SpanId {
    loop {
        if let Some(v) = NonZeroU64::new(next()) {
            return SpanId(v);
        }
    }
}

/// 32 lower-case hex digits of fresh randomness.
#[inline]
pub(crate) fn request_id() -> [u8; 32] {
    let mut out = [0u8; 32];
    let v = (u128::from(next()) << 64) | u128::from(next());
    garrison_core::hex_write(&v.to_be_bytes(), &mut out);
    out
}
