//! Emulated writes to write-protected guest page tables: KVM's `kvm_mmu_track_write`
//! (formerly `kvm_mmu_pte_write`), with write-flooding and misalignment detection.
//!
//! The backend decides *what* was written (on sim the value is known; on kvm the faulting
//! instruction is decoded) and calls [`Mmu::emulate_write`] or [`Mmu::emulate_rmw_u64`]; the
//! store itself is done here, under the write lock, so it is atomic with respect to every
//! other emulated write and to syncs.

use std::sync::atomic::Ordering;

use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, SpIdx, SpteRef};
use super::stats::{Counter, CounterBlock};
use super::vcpu::VcpuMmu;
use super::zap::ZapList;
use super::{Mmu, MmuError};

/// Emulated writes to a non-leaf shadowed page, without a walk through it in between, that
/// make KVM decide it is no longer a page table (`detect_write_flooding`).
pub const WRITE_FLOODING_THRESHOLD: u32 = 3;

impl<P: SyncPolicy> Mmu<P> {
    /// Emulates the guest's store of `data` (1..=8 bytes, not crossing a page) at
    /// guest-physical `gpa`, then updates the shadow pages of that gfn
    /// (`kvm_mmu_track_write`). Bad input (outside RAM, bad length, page crossing) is an
    /// error and writes nothing.
    pub fn emulate_write(&self, v: &VcpuMmu, gpa: u64, data: &[u8]) -> Result<(), MmuError> {
        check_write(gpa, data.len())?;
        let c = self.counters(v.id);
        let mut st = self.state.write();
        if data.len() == 8 && gpa % 8 == 0 {
            let mut b = [0u8; 8];
            b.copy_from_slice(data);
            self.mem
                .write_gpa_u64(gpa, u64::from_le_bytes(b), Ordering::Release)?;
        } else {
            self.mem.write_gpa(gpa, data)?;
        }
        self.kvm_mmu_track_write(&mut st, c, gpa, data.len());
        Ok(())
    }

    /// Emulates an atomic read-modify-write of the aligned 8 bytes at `gpa` (e.g. a
    /// `lock xadd` on a page-table page): `new = f(old)` under the MMU write lock, which every
    /// other writer of a write-protected page holds too. Returns the old value.
    pub fn emulate_rmw_u64(
        &self,
        v: &VcpuMmu,
        gpa: u64,
        f: impl FnOnce(u64) -> u64,
    ) -> Result<u64, MmuError> {
        check_write(gpa, 8)?;
        if gpa % 8 != 0 {
            return Err(MmuError::BadEmulatedWrite {
                gpa,
                len: 8,
                why: "an atomic read-modify-write must be 8-byte aligned",
            });
        }
        let c = self.counters(v.id);
        let mut st = self.state.write();
        let old = self.mem.read_gpa_u64(gpa, Ordering::Acquire)?;
        self.mem.write_gpa_u64(gpa, f(old), Ordering::Release)?;
        self.kvm_mmu_track_write(&mut st, c, gpa, 8);
        Ok(old)
    }

    /// KVM's `kvm_mmu_track_write`: for every shadow page of the written gfn, a misaligned
    /// write or a flooded (non-leaf) page zaps the page; otherwise the SPTE shadowing the
    /// written guest PTE is zapped, and the next access refaults through the new guest PTE.
    /// (KVM stopped updating the SPTE in place in 2021, "Remove the defunct update_pte()
    /// paging hook"; so do we.)
    fn kvm_mmu_track_write(&self, st: &mut MmuState, c: &CounterBlock, gpa: u64, bytes: usize) {
        c.inc(Counter::emulated_writes);
        let Some(list) = st.page_hash.get(&(gpa >> 12)).cloned() else {
            return;
        };
        let mut zap = ZapList::default();
        for sp in list {
            if self.sp(sp).is_invalid() {
                continue;
            }
            if detect_write_misaligned(gpa, bytes) || self.detect_write_flooding(sp) {
                self.kvm_mmu_prepare_zap_page(st, c, sp, &mut zap);
                c.inc(Counter::flooded);
                continue;
            }
            let index = ((gpa & 0xfff) / 8) as u16;
            if self.sp(sp).role().level == 4
                && index as usize == shadowlab_abi::layout::MONITOR_SLOT
            {
                continue;
            }
            if self.mmu_page_zap_pte(st, SpteRef { sp, index }) {
                c.inc(Counter::pte_writes_zapped);
                zap.flush = true;
            }
        }
        self.commit_zap(st, c, zap);
    }

    /// KVM's `detect_write_flooding`: leaf pages never flood (they can be unsynced instead);
    /// an upper-level page written [`WRITE_FLOODING_THRESHOLD`] times with no walk through it
    /// in between is probably no longer a page table.
    fn detect_write_flooding(&self, sp: SpIdx) -> bool {
        let p = self.sp(sp);
        if p.role().level == 1 {
            return false;
        }
        p.write_flooding_count.fetch_add(1, Ordering::Relaxed) + 1 >= WRITE_FLOODING_THRESHOLD
    }
}

/// KVM's `detect_write_misaligned`: a write that is not one whole PTE (shorter than 4 bytes, or
/// straddling two PTEs), except a single byte at the start of a PTE (guests flip status bits
/// that way).
fn detect_write_misaligned(gpa: u64, bytes: usize) -> bool {
    let offset = gpa & 0xfff;
    if offset % 8 == 0 && bytes == 1 {
        return false;
    }
    let last = offset + bytes as u64 - 1;
    (offset ^ last) & !7 != 0 || bytes < 4
}

fn check_write(gpa: u64, len: usize) -> Result<(), MmuError> {
    let why = if len == 0 || len > 8 {
        "length must be 1..=8 bytes"
    } else if (gpa & 0xfff) + len as u64 > 4096 {
        "the write crosses a page boundary"
    } else {
        return Ok(());
    };
    Err(MmuError::BadEmulatedWrite { gpa, len, why })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::{Access, FaultOutcome};
    use shadowlab_abi::layout::{self, pte};

    #[test]
    fn misalignment_rules_match_kvm() {
        assert!(!detect_write_misaligned(0x1000, 8));
        assert!(!detect_write_misaligned(0x1008, 4));
        assert!(!detect_write_misaligned(0x1010, 1));
        assert!(detect_write_misaligned(0x1011, 1));
        assert!(detect_write_misaligned(0x1004, 8));
        assert!(detect_write_misaligned(0x1000, 2));
    }

    #[test]
    fn emulated_upper_level_write_zaps_the_affected_spte() {
        let mut r = Rig::new(1);
        let d1 = r.g.frame();
        let d2 = r.g.frame();
        r.g.map(r.root, GVA, d1, pte::P | pte::W | pte::D);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        // Repoint the PDE at a fresh PT mapping d2, through emulation (the PD is protected).
        let pde = r.g.entry(r.root, GVA, 2);
        let pt2 = r.g.frame();
        r.g.set(
            pt2 + layout::pt_index(GVA, 1) as u64 * 8,
            d2 | pte::P | pte::W | pte::D,
        );
        r.mmu
            .emulate_write(&v, pde, &(pt2 | pte::P | pte::W | pte::U).to_le_bytes())
            .unwrap();
        assert_eq!(r.g.get(pde) & pte::ADDR_MASK, pt2);
        assert!(
            r.mmu.shadow_translate(&v, GVA).is_err(),
            "the stale PDE link is gone"
        );
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        assert_eq!(r.mmu.shadow_translate(&v, GVA).unwrap().gpa_page, Some(d2));
        let s = r.mmu.stats();
        assert_eq!((s.emulated_writes, s.pte_writes_zapped), (1, 1));
        r.audit();
    }

    #[test]
    fn write_flooding_zaps_an_upper_level_page() {
        let mut r = Rig::new(1);
        let d = r.g.frame();
        r.g.map(r.root, GVA, d, pte::P | pte::W | pte::D);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        let pd = r.g.entry(r.root, GVA, 2) & !0xfff;
        let before = r.mmu.stats().pages_zapped;
        // Three writes to unrelated entries of the PD, no walk in between.
        for i in 0..3u64 {
            r.mmu
                .emulate_write(&v, pd + 8 * (100 + i), &0u64.to_le_bytes())
                .unwrap();
        }
        let s = r.mmu.stats();
        assert_eq!(s.flooded, 1);
        assert!(s.pages_zapped > before);
        assert!(r.mmu.shadow_translate(&v, GVA).is_err());
        // The guest still translates; the next access rebuilds.
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        r.audit();
    }

    #[test]
    fn loading_a_root_resets_its_flooding_count() {
        // Two address spaces; the guest edits the PML4 of the one it is not running, one
        // entry per switch, as a kernel preparing another process's tables does.
        let mut r = Rig::new(1);
        let other = r.g.frame();
        let d = r.g.frame();
        r.g.map(other, GVA, d, pte::P | pte::W | pte::D);
        let mut v = r.vcpu(0);
        r.mmu.kvm_mmu_new_pgd(&mut v, other).unwrap();
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        r.mmu.kvm_mmu_new_pgd(&mut v, r.root).unwrap();
        for i in 0..6u64 {
            // Not current: the write is emulated against the cached root's shadow page.
            r.mmu
                .emulate_write(&v, other + 8 * (10 + i), &0u64.to_le_bytes())
                .unwrap();
            r.mmu.kvm_mmu_new_pgd(&mut v, other).unwrap();
            r.mmu.kvm_mmu_new_pgd(&mut v, r.root).unwrap();
        }
        let s = r.mmu.stats();
        assert_eq!(
            s.flooded, 0,
            "each CR3 load of the edited root resets its count"
        );
        assert_eq!(s.pages_zapped, 0, "{s:?}");
        r.mmu.kvm_mmu_new_pgd(&mut v, other).unwrap();
        assert_eq!(r.mmu.shadow_translate(&v, GVA).unwrap().gpa_page, Some(d));
        r.audit();
    }

    #[test]
    fn walking_resets_the_flooding_count() {
        let mut r = Rig::new(1);
        let d = r.g.frame();
        r.g.map(r.root, GVA, d, pte::P | pte::W | pte::D);
        let mut v = r.vcpu(0);
        let pd = {
            assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
            r.g.entry(r.root, GVA, 2) & !0xfff
        };
        for i in 0..6u64 {
            r.mmu
                .emulate_write(&v, pd + 8 * (100 + i), &0u64.to_le_bytes())
                .unwrap();
            // A fault walking through the PD in between (another gva under it).
            let other = GVA + (1 + i) * 4096;
            r.g.map(r.root, other, d, pte::P);
            assert_eq!(r.fault(&mut v, other, Access::READ), FaultOutcome::Fixed);
        }
        assert_eq!(r.mmu.stats().flooded, 0);
        r.audit();
    }

    #[test]
    fn bad_emulated_writes_are_errors_and_write_nothing() {
        let mut r = Rig::new(1);
        let f = r.g.frame();
        let v = r.vcpu(0);
        let bad = [
            (r.g.mem.pool_base(), 8usize),
            (r.g.mem.ram_bytes(), 8),
            (u64::MAX - 3, 4),
            (f + 0xffc, 8),
            (f, 0),
            (f, 9),
        ];
        for (gpa, len) in bad {
            let data = vec![0xffu8; len];
            assert!(
                r.mmu.emulate_write(&v, gpa, &data).is_err(),
                "{gpa:#x}/{len}"
            );
        }
        assert!(r.mmu.emulate_rmw_u64(&v, f + 4, |x| x + 1).is_err());
        assert_eq!(r.g.get(f + 0xff8), 0);
        assert_eq!(r.g.get(f), 0);
        assert_eq!(r.mmu.emulate_rmw_u64(&v, f + 8, |x| x + 5).unwrap(), 0);
        assert_eq!(r.g.get(f + 8), 5);
    }
}
