//! The in-process store: one GCRA state (8 bytes) per tracked key, in sharded hash tables.
//!
//! Looking up a known key takes a shard's read lock and updates the key's state with one
//! compare-and-swap, so requests of different keys, and of the same key, never wait for each
//! other. Only the first request of a new key takes the shard's write lock.
//!
//! Idle keys (whose state says their allowance is whole again) are dropped a shard at a time:
//! when a shard must grow and its last sweep is older than the sweep interval, and on a
//! schedule by [`MemoryStore::sweep`]. Dropping such a key loses nothing: a key with no state
//! and a key whose allowance is whole are the same thing to GCRA.
//!
//! A shard never holds more than its share of `max_keys`. When a flood of new keys finds a
//! shard full of keys that are still active, the newcomers share that shard's overflow
//! bucket: collectively limited by the policy, while the keys already tracked keep their
//! own allowance.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::gcra::{self, Decision};
use crate::policy::Quota;
use crate::ClientKey;

/// Keys are already seeded hashes: the table uses them as they are.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct NoHash(u64);

impl Hasher for NoHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, AtomicU64, BuildHasherDefault<NoHash>>;

/// Bytes one tracked key costs at most in a table, counting the load factor of a table that
/// just doubled: (8-byte key + 8-byte state + 1 control byte) / 7/8 load, times 2.
pub const BYTES_PER_KEY_MAX: usize = 39;

#[repr(align(64))]
#[derive(Debug)]
struct Shard {
    map: RwLock<Map>,
    overflow: AtomicU64,
    next_sweep: AtomicU64,
}

/// The table of one policy.
#[derive(Debug)]
pub(crate) struct MemoryTable {
    quota: Quota,
    shards: Box<[Shard]>,
    shard_cap: usize,
    sweep_every: u64,
    global: AtomicU64,
    overflowed: AtomicU64,
}

const SHARDS: usize = 64;

impl MemoryTable {
    pub(crate) fn new(quota: Quota, max_keys: usize, sweep_every: u64) -> Self {
        Self {
            quota,
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: RwLock::new(Map::default()),
                    overflow: AtomicU64::new(0),
                    next_sweep: AtomicU64::new(0),
                })
                .collect(),
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            sweep_every,
            global: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn quota(&self) -> &Quota {
        &self.quota
    }

    #[inline]
    fn shard(&self, key: ClientKey) -> &Shard {
        // The table indexes by the low bits and tags by the top seven: shard by others.
        &self.shards[(key.0 >> 40) as usize % SHARDS]
    }

    /// One request of `key` at `now` (nanoseconds on the limiter's clock).
    #[inline]
    pub(crate) fn check(&self, key: ClientKey, now: u64) -> Decision {
        self.take(key, now, 1).1
    }

    /// Takes up to `want` requests of `key`; returns how many were granted.
    pub(crate) fn take(&self, key: ClientKey, now: u64, want: u32) -> (u32, Decision) {
        let shard = self.shard(key);
        {
            let map = shard.map.read();
            if let Some(cell) = map.get(&key.0) {
                return update(&self.quota, cell, now, want);
            }
        }
        let mut map = shard.map.write();
        if let Some(cell) = map.get(&key.0) {
            return update(&self.quota, cell, now, want);
        }
        // Sweep before the table grows or when it is full, at most once per sweep interval:
        // a flood of new keys must not turn every insert into a scan.
        if (map.len() >= self.shard_cap || map.len() == map.capacity())
            && self.sweep_due(shard, now)
        {
            sweep_map(&mut map, now);
            shard
                .next_sweep
                .store(now.saturating_add(self.sweep_every), Ordering::Relaxed);
        }
        if map.len() >= self.shard_cap {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return update(&self.quota, &shard.overflow, now, want);
        }
        let t = gcra::take(&self.quota, 0, now, want);
        if let Some(tat) = t.new_tat {
            map.insert(key.0, AtomicU64::new(tat));
        }
        (t.granted, t.decision)
    }

    fn sweep_due(&self, shard: &Shard, now: u64) -> bool {
        now >= shard.next_sweep.load(Ordering::Relaxed)
    }

    /// The single bucket of [`KeySource::Global`](crate::KeySource::Global).
    #[inline]
    pub(crate) fn check_global(&self, now: u64) -> Decision {
        update(&self.quota, &self.global, now, 1).1
    }

    /// Drops the keys that are idle at `now`, one shard at a time, and gives back the memory
    /// of tables that shrank to a quarter of their capacity. Returns the keys dropped.
    pub(crate) fn sweep(&self, now: u64) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.map.write();
            let before = map.len();
            sweep_map(&mut map, now);
            dropped += before - map.len();
            shard
                .next_sweep
                .store(now.saturating_add(self.sweep_every), Ordering::Relaxed);
        }
        dropped
    }

    /// Keys tracked now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.read().len()).sum()
    }

    /// Bytes held by the tables (capacity, not length).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let cap = s.map.read().capacity();
                // hashbrown: buckets are the next power of two over capacity * 8 / 7.
                let buckets = if cap == 0 {
                    0
                } else {
                    (cap * 8 / 7).next_power_of_two()
                };
                buckets * 17
            })
            .sum::<usize>()
            + std::mem::size_of::<Shard>() * SHARDS
    }

    /// Requests that were counted in an overflow bucket because their shard was full.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

fn sweep_map(map: &mut Map, now: u64) {
    map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

#[inline]
fn update(q: &Quota, cell: &AtomicU64, now: u64, want: u32) -> (u32, Decision) {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let t = gcra::take(q, cur, now, want);
        let Some(new) = t.new_tat else {
            return (0, t.decision);
        };
        match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return (t.granted, t.decision),
            Err(actual) => cur = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_keys_are_swept_and_memory_returns() {
        let t = MemoryTable::new(Policy::per_second("p", 10).quota(), 1 << 20, 10 * S);
        for k in 0..50_000u64 {
            assert!(
                t.check(ClientKey(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), S)
                    .allowed
            );
        }
        assert_eq!(t.len(), 50_000);
        let full = t.memory_bytes();
        // Still active 50 ms later: nothing goes.
        assert_eq!(t.sweep(S + S / 20), 0);
        // Whole again after 100 ms: every key goes, and the memory with it.
        assert_eq!(t.sweep(S + S / 10), 50_000);
        assert_eq!(t.len(), 0);
        assert!(
            t.memory_bytes() < full / 10,
            "{} vs {full}",
            t.memory_bytes()
        );
    }

    #[test]
    fn a_full_shard_sends_newcomers_to_its_overflow_bucket() {
        // 64 keys in all: one per shard; 2 requests per second each.
        let t = MemoryTable::new(Policy::per_second("p", 2).quota(), 64, 2 * S);
        let key = |shard: u64, n: u64| ClientKey(shard << 40 | n);
        assert!(t.check(key(3, 1), S).allowed);
        // Shard 3 is full: the next two newcomers share one bucket of 2.
        assert!(t.check(key(3, 2), S).allowed);
        assert!(t.check(key(3, 3), S).allowed);
        assert!(!t.check(key(3, 4), S).allowed);
        assert_eq!(t.overflowed(), 3);
        // The tracked key keeps its own allowance.
        assert!(t.check(key(3, 1), S).allowed);
        // The tracked key is idle at 2 s, but a full shard is swept at most every 2 s.
        assert!(t.check(key(3, 5), 2 * S).allowed);
        assert_eq!(t.overflowed(), 4);
        // At the next sweep a newcomer takes the idle key's place.
        assert!(t.check(key(3, 6), 3 * S).allowed);
        assert_eq!(t.len(), 1);
        assert_eq!(t.overflowed(), 4);
    }
}
