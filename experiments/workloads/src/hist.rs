//! A fixed log2 latency histogram: percentiles without a heap.

/// Number of buckets: bucket 0 holds the value 0, bucket `b >= 1` holds `[2^(b-1), 2^b)`.
pub const BUCKETS: usize = 65;

/// Per-op latency samples (in [`crate::Cpu::timestamp`] units) in log2 buckets, plus exact
/// count, sum, min and max. Percentiles come back as the upper bound of their bucket, so they
/// are exact to within a factor of two; the mean (`sum / count`) is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Sample counts per bucket.
    pub buckets: [u64; BUCKETS],
    /// Number of samples.
    pub count: u64,
    /// Sum of the samples (saturating).
    pub sum: u64,
    /// Smallest sample (`u64::MAX` when empty).
    pub min: u64,
    /// Largest sample (0 when empty).
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Histogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// The bucket of `value`.
    #[inline]
    pub const fn bucket_of(value: u64) -> usize {
        (64 - value.leading_zeros()) as usize
    }

    /// The largest value bucket `b` holds.
    #[inline]
    pub const fn bucket_upper(b: usize) -> u64 {
        if b == 0 {
            0
        } else if b >= 64 {
            u64::MAX
        } else {
            (1u64 << b) - 1
        }
    }

    /// Adds one sample.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.buckets[Self::bucket_of(value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every sample of `other` (e.g. to merge the vCPUs' histograms).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The upper bound of the bucket holding the sample of rank `ceil(count * permille / 1000)`
    /// (`permille` 500 = median, 990 = p99), clamped to `max`; `None` when empty.
    pub fn percentile(&self, permille: u32) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let permille = u64::from(permille.min(1000));
        let rank = (self.count * permille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::bucket_upper(b).min(self.max).max(self.min));
            }
        }
        Some(self.max)
    }

    /// The median's bucket bound ([`Histogram::percentile`] at 500).
    pub fn median(&self) -> Option<u64> {
        self.percentile(500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1), 1);
        assert_eq!(Histogram::bucket_of(2), 2);
        assert_eq!(Histogram::bucket_of(3), 2);
        assert_eq!(Histogram::bucket_of(4), 3);
        assert_eq!(Histogram::bucket_of(u64::MAX), 64);
        for b in 1..64 {
            assert_eq!(Histogram::bucket_of(Histogram::bucket_upper(b)), b);
            assert_eq!(Histogram::bucket_of(Histogram::bucket_upper(b) + 1), b + 1);
        }
    }

    #[test]
    fn percentiles_bound_the_samples() {
        let mut h = Histogram::new();
        assert_eq!(h.median(), None);
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.sum, 500_500);
        assert_eq!((h.min, h.max), (1, 1000));
        // The true median is 500, in bucket [256, 512).
        assert_eq!(h.median(), Some(511));
        // p99 = 990, in bucket [512, 1024), clamped to max.
        assert_eq!(h.percentile(990), Some(1000));
        assert_eq!(h.percentile(0), Some(1));
    }

    #[test]
    fn merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(3);
        b.record(100);
        b.record(0);
        a.merge(&b);
        assert_eq!(a.count, 3);
        assert_eq!((a.min, a.max, a.sum), (0, 100, 103));
        assert_eq!(a.buckets[0] + a.buckets[2] + a.buckets[7], 3);
    }
}
