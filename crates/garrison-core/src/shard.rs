//! Counters that many threads add to at once without writing one cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const: no lazy initialisation to check on every count; `usize::MAX` means not yet
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A number of the calling thread, given out in turn the first time each thread asks: per
/// thread shards of a counter are indexed by it (modulo their number), so that threads
/// counting at once write different cache lines.
///
/// ```
/// let mine = garrison_core::thread_shard();
/// assert_eq!(garrison_core::thread_shard(), mine);
/// let other = std::thread::spawn(garrison_core::thread_shard).join().unwrap();
/// assert_ne!(other, mine);
/// ```
#[inline]
pub fn thread_shard() -> usize {
    SHARD.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
        s.set(v);
        v
    })
}

/// How many shards a [`ShardedCounters`] spreads its counts over.
const SHARDS: usize = 16;

/// A value alone on its cache line (128 bytes: adjacent-line prefetch pairs lines), so that
/// threads writing it do not slow down readers and writers of its neighbours.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let in_flight = garrison_core::CachePadded(AtomicUsize::new(0));
/// in_flight.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(std::mem::align_of_val(&in_flight), 128);
/// ```
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// `N` counters (say, one per outcome of a decision) that every request thread adds to:
/// each thread adds to its own shard of 16 ([`thread_shard`]), and reading sums them. A
/// plain shared `AtomicU64` would be written by every core on every request, its cache line
/// moving between them.
///
/// ```
/// let c = garrison_core::ShardedCounters::<2>::new();
/// c.add(0);
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| c.add(1)));
///     }
/// });
/// assert_eq!((c.get(0), c.get(1)), (1, 4000));
/// ```
#[derive(Debug)]
pub struct ShardedCounters<const N: usize> {
    shards: Box<[CachePadded<[AtomicU64; N]>]>,
}

impl<const N: usize> ShardedCounters<N> {
    /// `N` counters at zero.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| CachePadded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds one to counter `i` (`i < N`).
    #[inline]
    pub fn add(&self, i: usize) {
        self.shards[thread_shard() % SHARDS].0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counter `i`: the sum of its shards.
    pub fn get(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[i].load(Ordering::Relaxed))
            .sum()
    }
}

impl<const N: usize> Default for ShardedCounters<N> {
    fn default() -> Self {
        Self::new()
    }
}
