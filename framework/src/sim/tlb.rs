//! The software TLB of a simulated vCPU.
//!
//! It behaves like the least forgetful TLB the architecture allows: an entry, once filled by a
//! walk, stays until this vCPU executes INVLPG for its page, flushes, loads CR3, or takes a
//! page fault on that page (x86 invalidates the faulting translation). It never evicts on its
//! own, so a missing flush or a missed sync shows up as a stale read instead of being
//! hidden by capacity misses.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::mmu::GfnHasher;

/// One cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// Machine-physical address of the page.
    pub mpa_page: u64,
    /// ACC_* permissions (U, W, X) of the walk that filled it, whatever the access that
    /// filled it needed. Every hit is checked against them, as hardware checks its TLB entry:
    /// an entry a supervisor access filled for a U=0 page never serves a user access, and
    /// one a read filled for an NX page never serves a fetch.
    pub access: u8,
    /// The walk set (or found) the shadow leaf's D bit, so writes may use the entry.
    pub dirty: bool,
}

/// A software TLB keyed by virtual page number.
#[derive(Debug, Default)]
pub struct SoftTlb {
    entries: HashMap<u64, TlbEntry, BuildHasherDefault<GfnHasher>>,
    flushes: u64,
}

impl SoftTlb {
    /// The entry for `gva`'s page.
    #[inline]
    pub fn lookup(&self, gva: u64) -> Option<TlbEntry> {
        self.entries.get(&(gva >> 12)).copied()
    }

    /// Caches a translation for `gva`'s page.
    #[inline]
    pub fn fill(&mut self, gva: u64, e: TlbEntry) {
        self.entries.insert(gva >> 12, e);
    }

    /// INVLPG (or the invalidation that accompanies a #PF).
    #[inline]
    pub fn invalidate(&mut self, gva: u64) {
        self.entries.remove(&(gva >> 12));
    }

    /// Full flush (CR3 load, flush request).
    pub fn flush(&mut self) {
        self.entries.clear();
        self.flushes += 1;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Full flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_entries_until_invalidated_or_flushed() {
        let mut t = SoftTlb::default();
        let e = TlbEntry {
            mpa_page: 0x5000,
            access: 7,
            dirty: false,
        };
        t.fill(0x1234, e);
        assert_eq!(t.lookup(0x1ff8), Some(e));
        assert_eq!(t.lookup(0x2000), None);
        t.fill(0x2000, e);
        t.invalidate(0x1000);
        assert_eq!(t.lookup(0x1000), None);
        assert_eq!(t.len(), 1);
        t.flush();
        assert!(t.is_empty());
        assert_eq!(t.flushes(), 1);
    }
}
