//! Insert-only, fixed-capacity hash tables whose lookups are plain atomic loads: no lock, no
//! reference count, no fence on the hot path. Inserts are rare (a new route or series) and
//! are serialized by the caller's lock.

use std::sync::atomic::{AtomicU64, Ordering};

const EMPTY: u64 = u64::MAX;

#[inline]
fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: a cheap, well-spread hash of an integer key
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps `u64` keys (never `u64::MAX`) to `u32` values.
pub(crate) struct IntTable {
    keys: Box<[AtomicU64]>,
    values: Box<[AtomicU64]>,
    mask: usize,
}

impl IntTable {
    /// A table for up to `capacity` entries (kept at most half full).
    pub(crate) fn new(capacity: usize) -> Self {
        let slots = (capacity.max(1) * 2).next_power_of_two();
        Self {
            keys: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            values: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            mask: slots - 1,
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        self.find(key, |k| k == key)
            .map(|i| self.values[i].load(Ordering::Relaxed) as u32)
    }

    /// Inserts a key that is not present. The caller holds the insert lock and keeps the
    /// number of entries within the capacity given to [`new`](Self::new).
    pub(crate) fn insert(&self, key: u64, value: u32) {
        self.insert_from(key, key, value);
    }

    /// The slot of the first key, probing from the home slot of `start`, for which `hit`
    /// says yes; `None` at the first empty slot.
    #[inline]
    fn find(&self, start: u64, hit: impl Fn(u64) -> bool) -> Option<usize> {
        let mut i = mix(start) as usize & self.mask;
        loop {
            let k = self.keys[i].load(Ordering::Acquire);
            if k == EMPTY {
                return None;
            }
            if hit(k) {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Stores `key` and `value` in the first empty slot from the home slot of `start`.
    fn insert_from(&self, start: u64, key: u64, value: u32) {
        debug_assert_ne!(key, EMPTY);
        let mut i = mix(start) as usize & self.mask;
        while self.keys[i].load(Ordering::Relaxed) != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.values[i].store(u64::from(value), Ordering::Relaxed);
        // Release: a reader that sees the key sees the value.
        self.keys[i].store(key, Ordering::Release);
    }
}

/// Maps strings to `u32` ids. Strings live in the caller's arena; the table keeps
/// `(hash, id)` and asks the caller to compare.
pub(crate) struct StrTable {
    seed: foldhash::fast::FixedState,
    ids: IntTable,
}

impl StrTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            seed: foldhash::fast::FixedState::with_seed(0x6761_7272_6973_6f6e),
            ids: IntTable::new(capacity),
        }
    }

    #[inline]
    fn hash(&self, s: &str) -> u64 {
        use std::hash::BuildHasher;
        // Never EMPTY; the low 32 bits are replaced by the id in the key below.
        self.seed.hash_one(s) & !0xffff_ffff
    }

    /// The id of `s`, given a way to read the string of an id.
    #[inline]
    pub(crate) fn get<'a>(&self, s: &str, name_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        let h = self.hash(s);
        // Keys are `hash | id`: same hash, then the same string.
        self.ids
            .find(h, |k| k & !0xffff_ffff == h && name_of(k as u32) == s)
            .map(|i| self.ids.keys[i].load(Ordering::Relaxed) as u32)
    }

    /// Inserts `s` with `id`; the caller holds the insert lock and checked it is absent.
    pub(crate) fn insert(&self, s: &str, id: u32) {
        let h = self.hash(s);
        self.ids.insert_from(h, h | u64::from(id), id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_table_finds_what_was_inserted() {
        let t = IntTable::new(100);
        for k in 0..100u64 {
            assert_eq!(t.get(k * 7919), None);
            t.insert(k * 7919, k as u32);
        }
        for k in 0..100u64 {
            assert_eq!(t.get(k * 7919), Some(k as u32));
        }
        assert_eq!(t.get(1), None);
    }

    #[test]
    fn str_table_compares_strings_not_just_hashes() {
        let names: Vec<String> = (0..200).map(|i| format!("/route/{i}")).collect();
        let t = StrTable::new(200);
        for (i, n) in names.iter().enumerate() {
            t.insert(n, i as u32);
        }
        let name_of = |id: u32| names[id as usize].as_str();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.get(n, name_of), Some(i as u32));
        }
        assert_eq!(t.get("/route/200", name_of), None);
        assert_eq!(t.get("", name_of), None);
    }
}
