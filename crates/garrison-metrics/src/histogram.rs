//! Sharded fixed-bucket histograms.
//!
//! Each histogram keeps one row of counters per shard; a thread always writes the same shard,
//! so threads hammering one route do not fight over one cache line. Rows are padded to a
//! multiple of 128 bytes (two cache lines, against the adjacent-line prefetcher). Values are
//! integers (nanoseconds, bytes), so the sum is exact and updated with one `fetch_add`.

use std::sync::atomic::{AtomicU64, Ordering};

/// 16 × 8 bytes = 128 bytes.
const ROW_ALIGN: usize = 16;

pub(crate) struct Histogram {
    cells: Box<[AtomicU64]>,
    stride: usize,
}

impl Histogram {
    /// A histogram for `bounds.len()` finite buckets plus `+Inf`, with `shards` rows.
    pub(crate) fn new(buckets: usize, shards: usize) -> Self {
        // buckets finite + 1 (+Inf) + 1 (sum)
        let stride = (buckets + 2).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        let cells = (0..stride * shards).map(|_| AtomicU64::new(0)).collect();
        Self { cells, stride }
    }

    /// Counts `value` in the bucket whose upper bound is the first `>= value`, and returns that
    /// bucket's index (`bounds.len()` for `+Inf`).
    #[inline]
    pub(crate) fn observe(&self, bounds: &[u64], shard: usize, value: u64) -> usize {
        let bucket = bounds.partition_point(|&b| b < value);
        let base = shard * self.stride;
        self.cells[base + bucket].fetch_add(1, Ordering::Relaxed);
        self.cells[base + bounds.len() + 1].fetch_add(value, Ordering::Relaxed);
        bucket
    }

    /// Sums the shards. Counts are per bucket, not cumulative.
    pub(crate) fn snapshot(&self, bounds: &[u64]) -> (Vec<u64>, u64) {
        let n = bounds.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum = 0u64;
        for row in self.cells.chunks_exact(self.stride) {
            for (c, cell) in counts.iter_mut().zip(&row[..n]) {
                *c += cell.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(row[n].load(Ordering::Relaxed));
        }
        (counts, sum)
    }
}

/// The shard of the calling thread: threads are numbered round-robin on first use.
pub(crate) use garrison_core::thread_shard as current_shard;

/// A point-in-time copy of one histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
}

impl HistogramSnapshot {
    pub(crate) fn new(bounds: Vec<f64>, counts: Vec<u64>, sum: f64) -> Self {
        debug_assert_eq!(bounds.len() + 1, counts.len());
        Self {
            bounds,
            counts,
            sum,
        }
    }

    /// The finite upper bounds, ascending (the last bucket, `+Inf`, has none).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The count of each bucket (not cumulative), `+Inf` last.
    pub fn bucket_counts(&self) -> &[u64] {
        &self.counts
    }

    /// The cumulative counts, as Prometheus' `le` buckets.
    pub fn cumulative_counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations (seconds for durations, bytes for sizes).
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), estimated exactly as Prometheus' `histogram_quantile`
    /// does: linear interpolation inside the bucket that holds the rank; a rank in `+Inf`
    /// yields the highest finite bound. `None` when there are no observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            let upto = below + c;
            if (upto as f64) >= rank && c > 0 {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 {
                    if upper <= 0.0 {
                        return Some(upper);
                    }
                    0.0
                } else {
                    self.bounds[i - 1]
                };
                return Some(lower + (upper - lower) * ((rank - below as f64) / c as f64));
            }
            below = upto;
        }
        self.bounds.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_le_buckets() {
        let bounds = [10, 20, 30];
        let h = Histogram::new(bounds.len(), 2);
        for (v, want) in [
            (0, 0),
            (10, 0),
            (11, 1),
            (20, 1),
            (30, 2),
            (31, 3),
            (u64::MAX / 4, 3),
        ] {
            assert_eq!(h.observe(&bounds, 1, v), want, "{v}");
        }
        let (counts, sum) = h.snapshot(&bounds);
        assert_eq!(counts, vec![2, 2, 1, 2]);
        assert_eq!(sum, 10 + 11 + 20 + 30 + 31 + u64::MAX / 4);
    }

    #[test]
    fn shards_add_up() {
        let bounds = [5];
        let h = Histogram::new(1, 4);
        for shard in 0..4 {
            h.observe(&bounds, shard, 1);
            h.observe(&bounds, shard, 9);
        }
        assert_eq!(h.snapshot(&bounds), (vec![4, 4], 40));
    }

    #[test]
    fn quantile_matches_prometheus_interpolation() {
        // 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, 4]
        let s = HistogramSnapshot::new(vec![1.0, 2.0, 4.0], vec![4, 4, 2, 0], 0.0);
        assert_eq!(s.quantile(0.5), Some(1.25));
        assert_eq!(s.quantile(0.4), Some(1.0));
        assert_eq!(s.quantile(0.9), Some(3.0));
        assert_eq!(s.quantile(1.0), Some(4.0));
        let inf = HistogramSnapshot::new(vec![1.0], vec![0, 3], 0.0);
        assert_eq!(inf.quantile(0.99), Some(1.0));
        assert_eq!(
            HistogramSnapshot::new(vec![1.0], vec![0, 0], 0.0).quantile(0.5),
            None
        );
    }
}
