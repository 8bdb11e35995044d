//! A [`Report`] as the words of the guest's report block (`shadowlab_abi::report_words`): the
//! guest encodes it with [`Report::to_words`], the VMM decodes it with [`Report::from_words`].
//! One encoding, beside its decoding.

use shadowlab_abi::report_words as w;

use crate::error::ReportWordsError;
use crate::hist::{Histogram, BUCKETS};
use crate::report::Report;

// The block carries `Histogram::buckets` word for word.
const _: () = assert!(w::NR_BUCKETS == BUCKETS);

impl Report {
    /// Writes this report into a report block (no heap: the guest fills a block in its frame).
    pub fn to_words(&self, out: &mut [u64; w::TOTAL]) {
        out[w::VCPU] = self.vcpu as u64;
        out[w::OPS] = self.ops;
        out[w::CHECKS] = self.checks;
        out[w::PTE_WRITES] = self.pte_writes;
        out[w::CR3_LOADS] = self.cr3_loads;
        out[w::INVLPGS] = self.invlpgs;
        out[w::TLB_FLUSHES] = self.tlb_flushes;
        out[w::HYPERCALLS] = self.hypercalls;
        out[w::LAT_COUNT] = self.latency.count;
        out[w::LAT_SUM] = self.latency.sum;
        out[w::LAT_MIN] = self.latency.min;
        out[w::LAT_MAX] = self.latency.max;
        out[w::LAT_BUCKETS..].copy_from_slice(&self.latency.buckets);
    }

    /// Reads a report block back; refused unless it is exactly one block whose histogram
    /// [`Histogram::check`]s (the words come from the guest, which may be hostile).
    pub fn from_words(words: &[u64]) -> Result<Report, ReportWordsError> {
        if words.len() != w::TOTAL {
            return Err(ReportWordsError::Length { len: words.len() });
        }
        let mut latency = Histogram::new();
        latency.buckets.copy_from_slice(&words[w::LAT_BUCKETS..]);
        latency.count = words[w::LAT_COUNT];
        latency.sum = words[w::LAT_SUM];
        latency.min = words[w::LAT_MIN];
        latency.max = words[w::LAT_MAX];
        latency.check().map_err(ReportWordsError::Histogram)?;
        Ok(Report {
            // The VMM checks it against the vCPU that sent it; a value beyond usize (only on
            // a 32-bit host) saturates and fails that check.
            vcpu: usize::try_from(words[w::VCPU]).unwrap_or(usize::MAX),
            ops: words[w::OPS],
            checks: words[w::CHECKS],
            pte_writes: words[w::PTE_WRITES],
            cr3_loads: words[w::CR3_LOADS],
            invlpgs: words[w::INVLPGS],
            tlb_flushes: words[w::TLB_FLUSHES],
            hypercalls: words[w::HYPERCALLS],
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::hist::HistError;
    use std::vec;

    #[test]
    fn encode_then_decode_is_the_identity() {
        let mut latency = Histogram::new();
        for v in [5, 7, 204, 257, 1000, 1000] {
            latency.record(v);
        }
        let r = Report {
            vcpu: 3,
            ops: 6,
            checks: 12,
            pte_writes: 9,
            cr3_loads: 2,
            invlpgs: 1,
            tlb_flushes: 4,
            hypercalls: 5,
            latency,
        };
        let mut block = [0u64; w::TOTAL];
        r.to_words(&mut block);
        assert_eq!(block[w::OPS], 6);
        assert_eq!(Report::from_words(&block), Ok(r));
        // An empty report (nothing recorded) too.
        Report::default().to_words(&mut block);
        assert_eq!(Report::from_words(&block), Ok(Report::default()));
    }

    #[test]
    fn a_bad_block_is_refused() {
        let mut block = vec![0u64; w::TOTAL];
        block[w::LAT_MIN] = u64::MAX;
        assert!(Report::from_words(&block).is_ok());
        assert_eq!(
            Report::from_words(&block[1..]),
            Err(ReportWordsError::Length { len: w::TOTAL - 1 })
        );
        block[w::LAT_BUCKETS + 7] = 2;
        block[w::LAT_COUNT] = 3;
        assert_eq!(
            Report::from_words(&block),
            Err(ReportWordsError::Histogram(HistError::CountMismatch {
                count: 3,
                buckets: Some(2)
            }))
        );
        assert_eq!(
            std::format!("{}", Report::from_words(&block).unwrap_err()),
            "report block: latency histogram buckets hold 2 samples but its count is 3"
        );
    }
}
