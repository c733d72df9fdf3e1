//! Latency samples and their percentiles, and loss/reorder accounting by sequence number.

use serde::Serialize;

/// Latency samples in nanoseconds. Runs here are small enough (at most a few
/// million samples) that keeping every sample and sorting once is exact and cheap.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u64>,
}

/// The percentiles a run reports, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn record(&mut self, nanos: u64) {
        self.samples.push(nanos);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The nearest-rank percentile `q` (0..=100) in nanoseconds; 0 when empty.
    /// `sorted` must be sorted ascending.
    fn rank(sorted: &[u64], q: f64) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        // Integer arithmetic in units of 0.001 %: 99.9 % of 1000 is rank 999, not
        // 1000 (in floating point 0.999 * 1000 rounds up past 999).
        let per_100k = (q * 1000.0).round() as usize;
        let rank = (per_100k * sorted.len()).div_ceil(100_000);
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// Sorts the samples and reads p50, p90, p99, p99.9 and the maximum.
    pub fn percentiles(&mut self) -> Percentiles {
        self.samples.sort_unstable();
        let us = |n: u64| n as f64 / 1000.0;
        let s = &self.samples;
        Percentiles {
            count: s.len() as u64,
            p50_us: us(Self::rank(s, 50.0)),
            p90_us: us(Self::rank(s, 90.0)),
            p99_us: us(Self::rank(s, 99.0)),
            p999_us: us(Self::rank(s, 99.9)),
            max_us: us(s.last().copied().unwrap_or(0)),
        }
    }
}

/// Tracks the sequence numbers coming back on one ordered stream (one pair).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sequencer {
    next: u64,
    pub received: u64,
    /// Arrived with a lower number than one already seen (or twice).
    pub reordered: u64,
    /// Numbers skipped over when a higher one arrived first.
    pub gaps: u64,
}

impl Sequencer {
    /// Accounts for `seq`; returns false if it arrived out of order.
    pub fn observe(&mut self, seq: u64) -> bool {
        self.received += 1;
        if seq < self.next {
            self.reordered += 1;
            return false;
        }
        self.gaps += seq - self.next;
        self.next = seq + 1;
        true
    }

    /// Frames sent but never received (after the grace period).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles of 1..=1000 are the values at those ranks.
    #[test]
    fn percentiles_follow_the_nearest_rank_rule() {
        let mut l = Latencies::default();
        for n in (1..=1000u64).rev() {
            l.record(n * 1000);
        }
        let p = l.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(
            (p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
    }

    /// One sample is every percentile; no sample reads as zeros, not a panic.
    #[test]
    fn tiny_sample_sets_do_not_panic() {
        let mut empty = Latencies::default();
        assert_eq!(empty.percentiles(), Percentiles::default());
        let mut one = Latencies::default();
        one.record(2500);
        let p = one.percentiles();
        assert_eq!((p.p50_us, p.p999_us, p.max_us), (2.5, 2.5, 2.5));
    }

    /// Merged sample sets report over the union.
    #[test]
    fn merging_keeps_every_sample() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        a.record(1000);
        b.record(3000);
        b.record(2000);
        a.merge(b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.percentiles().max_us, 3.0);
    }

    /// In-order numbers are clean; a late one is reordered; a skipped one is lost at the end.
    #[test]
    fn the_sequencer_counts_reordered_and_lost_frames() {
        let mut s = Sequencer::default();
        assert!(s.observe(0));
        assert!(s.observe(2));
        assert!(!s.observe(1));
        assert!(s.observe(3));
        assert_eq!((s.received, s.reordered, s.gaps), (4, 1, 1));
        assert_eq!(s.lost(4), 0);
        assert!(s.observe(5));
        assert_eq!(s.lost(6), 1);
    }
}
