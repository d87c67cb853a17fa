//! A fixed-bucket histogram of counts, for the metrics the server exports (the log's
//! fdatasync latency and batch sizes here; command latencies in the server).
//!
//! Invariants: recording is lock-free (three relaxed atomic adds) and allocates nothing, so
//! the log writer can record every batch; the bounds are fixed at construction and
//! increasing; a snapshot's buckets are cumulative counts, as Prometheus expects them.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Histogram {
    /// Upper bounds of the buckets (inclusive), increasing; a last bucket holds the rest.
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it), cumulative, then the total count.
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            running += self.counts[i].load(Ordering::Relaxed);
            buckets.push((bound, running));
        }
        let count = running + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_rest_counts_in_the_total() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&BOUNDS);
        for v in [0, 10, 11, 100, 5000, 7] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10, 3), (100, 5), (1000, 5)]);
        assert_eq!((s.count, s.sum), (6, 5128));
    }
}
