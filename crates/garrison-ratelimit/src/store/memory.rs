//! The in-process store: one GCRA state (8 bytes) per tracked key, in sharded hash tables.
//!
//! Looking up a known key takes a shard's read lock and updates the key's state with one
//! compare-and-swap, so requests of different keys, and of the same key, never wait for each
//! other. Only the first request of a new key takes the shard's write lock.
//!
//! Idle keys (whose state says their allowance is whole again) are dropped a shard at a time:
//! on a schedule by [`MemoryTable::sweep`], when a shard must grow and its last sweep is older
//! than the sweep interval, and at once when a new key finds no room. Dropping such a key
//! loses nothing: a key with no state and a key whose allowance is whole are the same thing to
//! GCRA.
//!
//! Room is one budget of `max_keys` for every policy's table ([`KeyBudget`]): each table has a
//! floor of its own (a quarter of the budget, split evenly), and the rest goes to whichever
//! tables need it. A new key that finds the budget spent sweeps its shard first, then up to
//! four others that no one holds; a shard's sweep is allowed again at once when it freed at
//! least a sixteenth of the shard, else after a back-off, so a flood of new keys costs at
//! most sixteen entries scanned per key, and a flood of active keys one scan per shard per
//! back-off. Only when
//! the keys are really active do newcomers share their shard's overflow bucket: collectively
//! limited by the policy, while the keys already tracked keep their own allowance.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{Answer, Ask, Nanos, Store};
use crate::gcra::{self, Decision};
use crate::policy::Quota;
use crate::ClientKey;

/// The in-process store: a table per policy, all under one budget of keys.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    tables: Box<[MemoryTable]>,
}

impl MemoryStore {
    /// Tables for policies of these quotas, `max_keys` over all of them.
    pub(crate) fn new(
        quotas: &[Quota],
        max_keys: usize,
        overflow_factor: u32,
        sweep_ns: u64,
    ) -> Self {
        let budget = KeyBudget::new(max_keys, quotas.len());
        Self {
            tables: quotas
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    MemoryTable::new(q, budget.clone(), i, sweep_ns)
                        .overflow_factor(overflow_factor)
                })
                .collect(),
        }
    }

    /// The table of policy `i`.
    #[inline]
    pub(crate) fn table(&self, i: usize) -> &MemoryTable {
        &self.tables[i]
    }

    /// Every policy's table, in the policies' order.
    pub(crate) fn tables(&self) -> impl Iterator<Item = &MemoryTable> {
        self.tables.iter()
    }

    /// Decides `ask` in memory.
    #[inline]
    pub(crate) fn check(&self, ask: &Ask<'_>) -> Decision {
        let table = &self.tables[ask.policy];
        if ask.global {
            table.check_global(ask.now)
        } else {
            table.check(ask.key, ask.now)
        }
    }
}

impl Store for MemoryStore {
    #[inline]
    fn decide(&self, ask: Ask<'_>, _clock: &Nanos) -> Answer {
        Answer::Decided(self.check(&ask))
    }
}

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

/// The room for keys shared by every policy's table: each table may always hold its floor,
/// and the tables together hold at most `max_keys`.
#[derive(Debug)]
pub(crate) struct KeyBudget {
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// Keys each table holds.
    held: Vec<usize>,
    /// Each table's floor.
    floors: Vec<usize>,
    /// Keys over the floors, over all tables, and the most there may be.
    shared: usize,
    shared_cap: usize,
}

impl KeyBudget {
    /// A budget of `max_keys` for `tables` tables: a quarter of it in equal floors.
    pub(crate) fn new(max_keys: usize, tables: usize) -> Arc<Self> {
        let tables = tables.max(1);
        let floor = (max_keys / 4 / tables).max(1);
        Arc::new(Self {
            state: Mutex::new(BudgetState {
                held: vec![0; tables],
                floors: vec![floor; tables],
                shared: 0,
                shared_cap: max_keys.saturating_sub(floor * tables),
            }),
        })
    }

    /// Room for one more key of table `t`.
    fn reserve(&self, t: usize) -> bool {
        let mut s = self.state.lock();
        if s.held[t] >= s.floors[t] {
            if s.shared >= s.shared_cap {
                return false;
            }
            s.shared += 1;
        }
        s.held[t] += 1;
        true
    }

    /// Table `t` dropped `n` keys.
    fn release(&self, t: usize, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.state.lock();
        let before = s.held[t];
        let after = before.saturating_sub(n);
        let floor = s.floors[t];
        let freed_shared = before.saturating_sub(floor) - after.saturating_sub(floor);
        s.shared -= freed_shared.min(s.shared);
        s.held[t] = after;
    }

    /// The floor of table `t`.
    #[cfg(test)]
    fn floor(&self, t: usize) -> usize {
        self.state.lock().floors[t]
    }
}

#[repr(align(64))]
#[derive(Debug)]
struct Shard {
    map: RwLock<Map>,
    overflow: AtomicU64,
    next_sweep: AtomicU64,
    /// When a new key that finds no room may sweep this shard again.
    next_room_sweep: AtomicU64,
}

/// The table of one policy.
#[derive(Debug)]
pub(crate) struct MemoryTable {
    quota: Quota,
    /// The quota of the overflow buckets: `quota` times the overflow factor.
    overflow_quota: Quota,
    shards: Box<[Shard]>,
    budget: Arc<KeyBudget>,
    /// This table's index in the budget.
    index: usize,
    sweep_every: u64,
    global: AtomicU64,
    overflowed: AtomicU64,
    /// The next shard a newcomer without room sweeps after its own.
    hand: AtomicUsize,
}

const SHARDS: usize = 64;

/// Shards besides its own that a newcomer without room may sweep.
const ROOM_SWEEP_SHARDS: usize = 4;

/// The longest a shard whose sweep found almost nothing idle waits before a new key may sweep
/// it again.
const ROOM_SWEEP_BACKOFF: u64 = 100_000_000;

impl MemoryTable {
    /// The table of table `index` of `budget`.
    pub(crate) fn new(
        quota: Quota,
        budget: Arc<KeyBudget>,
        index: usize,
        sweep_every: u64,
    ) -> Self {
        Self {
            quota,
            overflow_quota: quota,
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: RwLock::new(Map::default()),
                    overflow: AtomicU64::new(0),
                    next_sweep: AtomicU64::new(0),
                    next_room_sweep: AtomicU64::new(0),
                })
                .collect(),
            budget,
            index,
            sweep_every,
            global: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            hand: AtomicUsize::new(0),
        }
    }

    /// The overflow buckets admit `n` clients' worth: `n` times the rate and the burst.
    pub(crate) fn overflow_factor(mut self, n: u32) -> Self {
        let n = n.max(1);
        let q = self.quota;
        let emission = (q.emission / u64::from(n)).max(1);
        let burst = q.burst.saturating_mul(n);
        self.overflow_quota = Quota {
            emission,
            tolerance: emission.saturating_mul(u64::from(burst)),
            burst,
        };
        self
    }

    /// A table of its own budget of `max_keys` (tests).
    #[cfg(test)]
    fn alone(quota: Quota, max_keys: usize, sweep_every: u64) -> Self {
        Self::new(quota, KeyBudget::new(max_keys, 1), 0, sweep_every)
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
        // Sweep before the table grows, at most once per sweep interval: a flood of new keys
        // must not turn every insert into a scan.
        if map.len() == map.capacity() && self.sweep_due(shard, now) {
            self.sweep_shard(shard, &mut map, now);
        }
        let mut room = self.budget.reserve(self.index);
        if !room {
            // no room: drop idle keys at once, this shard's first, then the next few shards'
            // that are free to lock (never waiting for one: another newcomer may hold it)
            if self.room_sweep(shard, &mut map, now) {
                room = self.budget.reserve(self.index);
            }
            let mut tries = 0;
            while !room && tries < ROOM_SWEEP_SHARDS {
                tries += 1;
                let i = self.hand.fetch_add(1, Ordering::Relaxed) % SHARDS;
                let other = &self.shards[i];
                if std::ptr::eq(other, shard) {
                    continue;
                }
                if let Some(mut m) = other.map.try_write() {
                    if self.room_sweep(other, &mut m, now) {
                        room = self.budget.reserve(self.index);
                    }
                }
            }
        }
        if !room {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return update(&self.overflow_quota, &shard.overflow, now, want);
        }
        let t = gcra::take(&self.quota, 0, now, want);
        match t.new_tat {
            Some(tat) => {
                map.insert(key.0, AtomicU64::new(tat));
            }
            None => self.budget.release(self.index, 1),
        }
        (t.granted, t.decision)
    }

    /// Drops `shard`'s idle keys for a new key that found no room, unless a recent such
    /// sweep found almost nothing there; whether any went. A sweep that freed a sixteenth of
    /// the shard may run again at once (the keys it freed pay for it), else after a back-off.
    fn room_sweep(&self, shard: &Shard, map: &mut Map, now: u64) -> bool {
        if now < shard.next_room_sweep.load(Ordering::Relaxed) {
            return false;
        }
        let before = map.len();
        let freed = self.sweep_shard(shard, map, now);
        let backoff = if freed > 0 && freed * 16 >= before {
            0
        } else {
            self.sweep_every.min(ROOM_SWEEP_BACKOFF)
        };
        shard
            .next_room_sweep
            .store(now.saturating_add(backoff), Ordering::Relaxed);
        freed > 0
    }

    /// Drops `shard`'s idle keys (its map locked as `map`); returns how many went.
    fn sweep_shard(&self, shard: &Shard, map: &mut Map, now: u64) -> usize {
        let before = map.len();
        sweep_map(map, now);
        let freed = before - map.len();
        self.budget.release(self.index, freed);
        shard
            .next_sweep
            .store(now.saturating_add(self.sweep_every), Ordering::Relaxed);
        freed
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
        self.shards
            .iter()
            .map(|shard| self.sweep_shard(shard, &mut shard.map.write(), now))
            .sum()
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
        let t = MemoryTable::alone(Policy::per_second("p", 10).quota(), 1 << 20, 10 * S);
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
    fn newcomers_go_to_the_overflow_bucket_only_while_the_keys_are_really_active() {
        // 64 keys in all; 2 requests per second each: a key is idle 1 s after one request
        let t = MemoryTable::alone(Policy::per_second("p", 2).quota(), 64, 10 * S);
        let key = |shard: u64, n: u64| ClientKey(shard << 40 | n);
        for n in 0..64 {
            assert!(t.check(key(n % 64, n), S).allowed);
        }
        assert_eq!((t.len(), t.overflowed()), (64, 0));
        // every key is still active: newcomers share their shard's bucket of 2
        assert!(t.check(key(3, 100), S).allowed);
        assert!(t.check(key(3, 101), S).allowed);
        assert!(!t.check(key(3, 102), S).allowed);
        assert_eq!(t.overflowed(), 3);
        // a tracked key keeps its own allowance
        assert!(t.check(key(3, 3), S).allowed);
        // with a factor of 3, a shard's overflow bucket admits three clients' worth
        let crowd =
            MemoryTable::alone(Policy::per_second("p", 2).quota(), 64, 10 * S).overflow_factor(3);
        for n in 0..64 {
            crowd.check(key(n % 64, n), S);
        }
        let admitted = (100..120)
            .filter(|n| crowd.check(key(7, *n), S).allowed)
            .count();
        assert_eq!(admitted, 6);
        // 0.6 s later the keys are idle (one request is 0.5 s of allowance), long before the
        // sweep interval: a newcomer sweeps and takes an idle key's place
        assert!(t.check(key(5, 200), S + 3 * S / 5).allowed);
        assert_eq!(t.overflowed(), 3);
        // the other shards are swept as their newcomers need room
        for n in 0..63 {
            assert!(t.check(key(n % 64, 300 + n), 2 * S).allowed);
        }
        assert_eq!(t.overflowed(), 3);
        assert!(t.len() <= 64);
    }

    #[test]
    fn one_shot_keys_faster_than_the_sweep_interval_never_meet_the_overflow_bucket() {
        // 640 keys at most, 10 s sweep interval, 10 per second: a one-request key is idle
        // after 100 ms; a new key every millisecond keeps about 100 active
        let t = MemoryTable::alone(Policy::per_second("p", 10).quota(), 640, 10 * S);
        let mut now = S;
        for k in 0..20_000u64 {
            now += 1_000_000;
            let d = t.check(ClientKey(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), now);
            assert!(d.allowed, "key {k} refused at {now}");
        }
        assert_eq!(t.overflowed(), 0);
        assert!(t.len() <= 640, "{}", t.len());
    }

    #[test]
    fn one_policy_uses_what_the_others_do_not_and_leaves_them_their_floor() {
        let budget = KeyBudget::new(4000, 3);
        let q = Policy::per_minute("p", 10).quota();
        let tables: Vec<_> = (0..3)
            .map(|i| MemoryTable::new(q, budget.clone(), i, 600 * S))
            .collect();
        // a flood of active keys on the first policy
        for k in 0..10_000u64 {
            tables[0].check(ClientKey(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), S);
        }
        // it holds everything but the others' floors
        let floor = budget.floor(1);
        assert_eq!(floor, 4000 / 4 / 3);
        assert_eq!(tables[0].len(), 4000 - 2 * floor);
        // the others still get their floor of new keys, each tracked on its own
        for t in &tables[1..] {
            for k in 0..floor as u64 {
                assert!(
                    t.check(ClientKey(k.wrapping_mul(0x51_7CC1_B727_220A)), S)
                        .allowed
                );
            }
            assert_eq!(t.len(), floor);
            assert_eq!(t.overflowed(), 0);
        }
        // when the flood's keys go idle and are swept, the room is the others' again
        assert_eq!(tables[0].sweep(100 * S), 4000 - 2 * floor);
        for k in 0..1000u64 {
            tables[1].check(
                ClientKey(k.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1),
                100 * S,
            );
        }
        assert_eq!(tables[1].overflowed(), 0);
    }
}
