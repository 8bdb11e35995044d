//! [`Histogram`] in serde (feature `serde`): the exact `count`, `sum`, `min` and `max`, and the
//! non-empty buckets only, as `[bucket, samples]` pairs in index order (most of the 1920
//! buckets are empty):
//!
//! ```json
//! {"count": 3, "sum": 1211, "min": 5, "max": 1000, "buckets": [[5, 1], [106, 1], [192, 1]]}
//! ```
//!
//! Reading one back checks it ([`Histogram::check`]): a bucket index out of range, a list out
//! of order, counts that do not add up to `count`, or `min`/`max` outside the buckets are
//! refused with the [`HistError`] as the message. No heap: the buckets are read straight into
//! the fixed array.

use core::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::hist::HistError;
use crate::hist::{Histogram, BUCKETS};

/// The wire form of a [`Histogram`].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
    buckets: Sparse,
}

/// The bucket array, written as its non-empty `[bucket, samples]` pairs.
struct Sparse([u64; BUCKETS]);

impl Serialize for Sparse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 0)
                .map(|(b, &n)| (b as u64, n)),
        )
    }
}

impl<'de> Deserialize<'de> for Sparse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Sparse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of [bucket, samples] pairs in bucket order")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sparse, A::Error> {
                let mut buckets = [0u64; BUCKETS];
                let mut next = 0u64;
                while let Some((bucket, samples)) = seq.next_element::<(u64, u64)>()? {
                    if bucket >= BUCKETS as u64 {
                        return Err(de::Error::custom(HistError::BucketOutOfRange { bucket }));
                    }
                    if bucket < next {
                        return Err(de::Error::custom(HistError::BucketsOutOfOrder { bucket }));
                    }
                    buckets[bucket as usize] = samples;
                    next = bucket + 1;
                }
                Ok(Sparse(buckets))
            }
        }
        d.deserialize_seq(Pairs)
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            buckets: Sparse(self.buckets),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let h = Histogram {
            buckets: w.buckets.0,
            count: w.count,
            sum: w.sum,
            min: w.min,
            max: w.max,
        };
        h.check().map_err(de::Error::custom)?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Report;
    use std::string::ToString;

    fn sample() -> Histogram {
        let mut h = Histogram::new();
        for v in [5, 7, 204, 257, 1000, 1000, u64::MAX] {
            h.record(v);
        }
        h
    }

    #[test]
    fn round_trips_sparse_and_exact() {
        for h in [Histogram::new(), sample()] {
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(
                serde_json::from_str::<Histogram>(&json).unwrap(),
                h,
                "{json}"
            );
        }
        let json = serde_json::to_string(&sample()).unwrap();
        // Only the six non-empty buckets are written, not 1920.
        let b = Histogram::bucket_of;
        let want = std::format!(
            "\"buckets\":[[5,1],[7,1],[{},1],[{},1],[{},2],[{},1]]",
            b(204),
            b(257),
            b(1000),
            b(u64::MAX)
        );
        assert!(json.contains(&want), "{json}");
        assert_eq!(
            serde_json::to_string(&Histogram::new()).unwrap(),
            r#"{"count":0,"sum":0,"min":18446744073709551615,"max":0,"buckets":[]}"#
        );
    }

    #[test]
    fn a_report_round_trips() {
        let r = Report {
            vcpu: 1,
            ops: 7,
            checks: 3,
            pte_writes: 2,
            cr3_loads: 4,
            invlpgs: 5,
            tlb_flushes: 6,
            hypercalls: 8,
            latency: sample(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with(r#"{"vcpu":1,"ops":7,"checks":3,"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }

    /// The error message serde_json gives for `json` read as a histogram.
    fn refusal(json: &str) -> std::string::String {
        serde_json::from_str::<Histogram>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed_ones_are_refused_with_the_reason() {
        let head = r#"{"count":2,"sum":10,"min":5,"max":5,"buckets":"#;
        let bad = |buckets: &str| refusal(&std::format!("{head}{buckets}}}"));
        // The well-formed one is read back.
        let ok: Histogram = serde_json::from_str(&std::format!("{head}[[5,2]]}}")).unwrap();
        assert_eq!((ok.count, ok.buckets[5], ok.median()), (2, 2, Some(5)));
        assert!(
            bad("[[1920,2]]")
                .starts_with("latency histogram bucket 1920 is out of range (0..1920)"),
            "{}",
            bad("[[1920,2]]")
        );
        assert!(
            bad("[[5,1],[5,1]]")
                .starts_with("latency histogram bucket 5 is listed out of order or twice"),
            "{}",
            bad("[[5,1],[5,1]]")
        );
        assert!(
            bad("[[5,3]]")
                .starts_with("latency histogram buckets hold 3 samples but its count is 2"),
            "{}",
            bad("[[5,3]]")
        );
        assert!(
            bad("[[4,1],[5,1]]").starts_with("latency histogram min 5 / max 5 are not in"),
            "{}",
            bad("[[4,1],[5,1]]")
        );
        assert!(refusal(r#"{"count":0}"#).contains("missing field"));
        assert!(
            refusal(r#"{"count":0,"sum":0,"min":0,"max":0,"buckets":[],"p50":1}"#)
                .contains("unknown field `p50`")
        );
    }
}
