//! Roots: CR3 loads with a cache of previous roots (KVM's `kvm_mmu_new_pgd`,
//! `fast_pgd_switch`, `cached_root_find_and_keep_current`), root allocation and freeing
//! (`mmu_alloc_shadow_roots`, `mmu_free_root_page`), reload after a zap
//! (`kvm_mmu_free_obsolete_roots` + `kvm_mmu_load`), and the monitor's PML4 entry.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout::{self, pte};
use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, Role, SpIdx, SpteRef};
use super::spte::GPTE_RSVD_ADDR;
use super::stats::{Counter, CounterBlock};
use super::vcpu::{CachedRoot, VcpuMmu, KVM_MMU_NUM_PREV_ROOTS};
use super::{Mmu, MmuError};

impl<P: SyncPolicy> Mmu<P> {
    /// The guest loaded CR3 = `pgd` (KVM's `kvm_mmu_new_pgd` followed by the
    /// `KVM_REQ_MMU_SYNC` it requests): switch to the shadow root for `pgd`, then
    /// [`Mmu::kvm_mmu_sync_roots`]. The backend flushes its own TLB afterwards, as a CR3
    /// write does (no PCID).
    ///
    /// A root in the previous-roots cache is switched to **without the MMU lock**
    /// (`fast_pgd_switch`): the cache is per vCPU and a cached root stays pinned
    /// (`root_count`), so only its `invalid` flag needs checking. A miss takes the write lock,
    /// pushes the current root into the cache (evicting and freeing the oldest) and looks up
    /// or creates the root. A CR3 outside guest RAM is [`MmuError::BadCr3`] (on kvm a failed
    /// hypercall; the guest's tables are not touched).
    pub fn kvm_mmu_new_pgd(&self, v: &mut VcpuMmu, pgd: u64) -> Result<(), MmuError> {
        let c = self.counters(v.id);
        c.inc(Counter::cr3_loads);
        let pgd_page = pgd & pte::ADDR_MASK;
        if pgd & GPTE_RSVD_ADDR != 0 || self.mem.gpa_to_mpa(pgd_page).is_none() {
            return Err(MmuError::BadCr3(pgd));
        }
        let current_ok = v.root.is_some_and(|r| !self.sp(r).is_invalid());
        if current_ok && v.pgd == Some(pgd_page) {
            // Reload of the same CR3: a TLB flush.
        } else if current_ok && self.fast_pgd_switch(v, pgd_page) {
            c.inc(Counter::fast_cr3_switches);
        } else {
            let mut st = self.state.write();
            self.make_mmu_pages_available(&mut st, c, 1)?;
            if let (Some(cur), Some(old_pgd)) = (v.root.take(), v.pgd) {
                if self.sp(cur).is_invalid() {
                    self.mmu_free_root(&mut st, cur);
                } else {
                    if let Some(evicted) = v.prev_roots[KVM_MMU_NUM_PREV_ROOTS - 1].take() {
                        self.mmu_free_root(&mut st, evicted.sp);
                    }
                    v.prev_roots.rotate_right(1);
                    v.prev_roots[0] = Some(CachedRoot {
                        pgd: old_pgd,
                        sp: cur,
                    });
                }
            }
            let root = self.mmu_alloc_root(&mut st, c, pgd_page)?;
            self.set_root(v, root);
        }
        v.pgd = Some(pgd_page);
        // As kvm_mmu_new_pgd (`__clear_sp_write_flooding_count` of the new root): the guest is
        // using this table again, so the emulated writes it made while the table was not
        // current are not flooding. Without this, a few edits of a non-current PML4 between
        // switches add up and zap a root the guest keeps using.
        if let Some(r) = v.root {
            self.sp(r).write_flooding_count.store(0, Ordering::Relaxed);
        }
        self.kvm_mmu_sync_roots(v);
        Ok(())
    }

    /// KVM's `cached_root_find_and_keep_current`: if `pgd` is cached, swap it with the current
    /// root, keeping the cache in most-recently-used order. No lock: only this vCPU touches its
    /// cache, and root_counts do not change (both roots stay referenced by this vCPU).
    fn fast_pgd_switch(&self, v: &mut VcpuMmu, pgd: u64) -> bool {
        let Some(i) = v
            .prev_roots
            .iter()
            .position(|e| e.is_some_and(|e| e.pgd == pgd && !self.sp(e.sp).is_invalid()))
        else {
            return false;
        };
        let (Some(hit), Some(cur), Some(cur_pgd)) = (v.prev_roots[i], v.root, v.pgd) else {
            return false;
        };
        v.prev_roots[..=i].rotate_right(1);
        v.prev_roots[0] = Some(CachedRoot {
            pgd: cur_pgd,
            sp: cur,
        });
        self.set_root(v, hit.sp);
        true
    }

    fn set_root(&self, v: &mut VcpuMmu, sp: SpIdx) {
        v.root = Some(sp);
        v.root_hpa = self.sp(sp).spt;
    }

    /// KVM's `mmu_alloc_root`: the level-4 shadow page for guest PML4 `pgd`, pinned
    /// (`root_count`), with the monitor's entry in slot 511.
    fn mmu_alloc_root(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        pgd: u64,
    ) -> Result<SpIdx, MmuError> {
        let sp = self.kvm_mmu_get_page(st, c, pgd >> 12, Role::ROOT)?;
        st.sp[sp.0 as usize].root_count += 1;
        let m = self.monitor_pml4e.load(Ordering::Relaxed);
        if m != 0 {
            self.store_spte(
                SpteRef {
                    sp,
                    index: layout::MONITOR_SLOT as u16,
                },
                m,
            );
        }
        c.inc(Counter::roots_allocated);
        Ok(sp)
    }

    /// KVM's `mmu_free_root_page`: drops one reference; an invalid root is freed with its
    /// last reference (its entries were cleared when it was zapped, and no vCPU runs on it).
    fn mmu_free_root(&self, st: &mut MmuState, sp: SpIdx) {
        let s = &mut st.sp[sp.0 as usize];
        s.root_count = s.root_count.saturating_sub(1);
        if s.root_count == 0 && self.sp(sp).is_invalid() {
            self.free_page(st, sp);
        }
    }

    /// Handles [`super::KVM_REQ_MMU_RELOAD`] (KVM's `kvm_mmu_free_obsolete_roots` then
    /// `kvm_mmu_load`): frees invalid current/cached roots and allocates a new current root
    /// for the last CR3, then syncs it.
    pub fn kvm_mmu_reload(&self, v: &mut VcpuMmu) -> Result<(), MmuError> {
        let c = self.counters(v.id);
        {
            let mut st = self.state.write();
            for slot in v.prev_roots.iter_mut() {
                if let Some(e) = *slot {
                    if self.sp(e.sp).is_invalid() {
                        self.mmu_free_root(&mut st, e.sp);
                        *slot = None;
                    }
                }
            }
            // Keep the cache dense, most recent first.
            let kept: Vec<CachedRoot> = v.prev_roots.iter().flatten().copied().collect();
            v.prev_roots = [None; KVM_MMU_NUM_PREV_ROOTS];
            for (i, e) in kept.into_iter().enumerate() {
                v.prev_roots[i] = Some(e);
            }
            if let Some(cur) = v.root {
                if !self.sp(cur).is_invalid() {
                    return Ok(());
                }
                self.mmu_free_root(&mut st, cur);
                v.root = None;
            }
            let Some(pgd) = v.pgd else {
                return Ok(());
            };
            self.make_mmu_pages_available(&mut st, c, 1)?;
            let root = self.mmu_alloc_root(&mut st, c, pgd)?;
            self.set_root(v, root);
        }
        self.kvm_mmu_sync_roots(v);
        Ok(())
    }

    /// KVM's `kvm_mmu_unload`: drops all of the vCPU's roots (at vCPU teardown).
    pub fn kvm_mmu_unload(&self, v: &mut VcpuMmu) {
        let mut st = self.state.write();
        for e in v.prev_roots.iter_mut() {
            if let Some(e) = e.take() {
                self.mmu_free_root(&mut st, e.sp);
            }
        }
        if let Some(r) = v.root.take() {
            self.mmu_free_root(&mut st, r);
        }
        v.pgd = None;
    }

    /// Sets the VMM monitor's PML4 entry (supervisor-only; the caller builds it, pointing at
    /// its tables in the monitor area) and writes it into slot 511 of every shadow root, now
    /// and for every root created later: PVM-style, the monitor is in every address space the
    /// vCPU can run on, and the guest's own slot 511 is never shadowed.
    ///
    /// The U bit of `pml4e` is cleared: the monitor is never user-accessible.
    pub fn link_monitor(&self, pml4e: u64) {
        let pml4e = pml4e & !pte::U;
        let _st = self.state.write();
        self.monitor_pml4e.store(pml4e, Ordering::Relaxed);
        for (i, p) in self.pages.iter().enumerate() {
            if _st.sp[i].allocated && p.role().level == 4 && !p.is_invalid() {
                self.store_spte(
                    SpteRef {
                        sp: SpIdx(i as u32),
                        index: layout::MONITOR_SLOT as u16,
                    },
                    pml4e,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::{Access, FaultOutcome, MmuError, KVM_REQ_MMU_RELOAD, KVM_REQ_TLB_FLUSH};

    #[test]
    fn cached_roots_switch_without_the_lock() {
        let mut r = Rig::new(1);
        let d = r.g.frame();
        let b = r.g.frame();
        r.g.map(b, GVA, d, pte::P | pte::D);
        let mut v = r.vcpu(0);
        let hpa_a = v.root_hpa().unwrap();
        r.mmu.kvm_mmu_new_pgd(&mut v, b).unwrap(); // miss
        let hpa_b = v.root_hpa().unwrap();
        assert_ne!(hpa_a, hpa_b);
        let locks = r.mmu.stats().lock.write_acquisitions;
        for _ in 0..5 {
            r.mmu.kvm_mmu_new_pgd(&mut v, r.root).unwrap();
            assert_eq!(v.root_hpa(), Some(hpa_a));
            r.mmu.kvm_mmu_new_pgd(&mut v, b).unwrap();
            assert_eq!(v.root_hpa(), Some(hpa_b));
        }
        let s = r.mmu.stats();
        assert_eq!(s.fast_cr3_switches, 10);
        if <crate::BuildPolicy as SyncPolicy>::LOCKLESS {
            assert_eq!(s.lock.write_acquisitions, locks);
        }
        assert_eq!(v.prev_roots().count(), 1);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        r.audit();
    }

    #[test]
    fn the_cache_keeps_three_roots_and_frees_the_evicted_one() {
        let mut r = Rig::new(1);
        let mut v = r.vcpu(0);
        let roots: Vec<u64> = (0..5).map(|_| r.g.frame()).collect();
        for &g in &roots {
            r.mmu.kvm_mmu_new_pgd(&mut v, g).unwrap();
        }
        assert_eq!(v.prev_roots().count(), KVM_MMU_NUM_PREV_ROOTS);
        let cached: Vec<u64> = v.prev_roots().map(|e| e.pgd).collect();
        assert_eq!(cached, vec![roots[3], roots[2], roots[1]]);
        r.audit();
        // The evicted roots (the rig's and roots[0]) are no longer pinned: zap_all frees them.
        r.mmu.kvm_mmu_zap_all();
        r.audit();
    }

    #[test]
    fn bad_cr3_is_an_error_and_changes_nothing() {
        let r = Rig::new(1);
        let mut v = r.vcpu(0);
        let hpa = v.root_hpa();
        for bad in [
            r.g.mem.pool_base(),
            r.g.mem.ram_bytes(),
            r.g.mem.monitor_mpa(),
            1 << 47,
            u64::MAX,
        ] {
            assert!(
                matches!(r.mmu.kvm_mmu_new_pgd(&mut v, bad), Err(MmuError::BadCr3(_))),
                "{bad:#x}"
            );
        }
        assert_eq!(v.root_hpa(), hpa);
        assert_eq!(v.pgd(), Some(r.root));
    }

    #[test]
    fn monitor_entry_is_in_every_root_and_survives_zaps() {
        let mut r = Rig::new(1);
        let mut v = r.vcpu(0);
        let m = r.g.mem.monitor_mpa() | pte::P | pte::W;
        r.mmu.link_monitor(m | pte::U); // forced supervisor-only
        let mem = std::sync::Arc::clone(&r.g.mem);
        let slot = move |hpa: u64| {
            mem.region()
                .load_u64(hpa + layout::MONITOR_SLOT as u64 * 8, Ordering::Relaxed)
                .unwrap()
        };
        assert_eq!(slot(v.root_hpa().unwrap()), m);
        let b = r.g.frame();
        // The guest's own slot 511 is ignored.
        r.g.set(
            b + layout::MONITOR_SLOT as u64 * 8,
            0x5000 | pte::P | pte::W | pte::U,
        );
        r.mmu.kvm_mmu_new_pgd(&mut v, b).unwrap();
        assert_eq!(slot(v.root_hpa().unwrap()), m);
        r.mmu.kvm_mmu_zap_all();
        r.mmu.kvm_mmu_reload(&mut v).unwrap();
        assert_eq!(slot(v.root_hpa().unwrap()), m);
        assert!(matches!(
            r.fault(&mut v, layout::MONITOR_BASE, Access::READ),
            FaultOutcome::GuestFault(_)
        ));
    }

    #[test]
    fn zapped_root_in_use_asks_for_reload_and_recovers() {
        let mut r = Rig::new(2);
        let d = r.g.frame();
        r.g.map(r.root, GVA, d, pte::P | pte::D);
        let mut v0 = r.vcpu(0);
        let mut v1 = r.vcpu(1);
        assert_eq!(v0.root_hpa(), v1.root_hpa(), "same CR3, same shadow root");
        assert_eq!(r.fault(&mut v0, GVA, Access::READ), FaultOutcome::Fixed);
        let _ = r.mmu.vcpu_take_requests(0);
        let _ = r.mmu.vcpu_take_requests(1);
        r.mmu.kvm_mmu_zap_all();
        for id in 0..2 {
            let req = r.mmu.vcpu_take_requests(id);
            assert_eq!(
                req & (KVM_REQ_MMU_RELOAD | KVM_REQ_TLB_FLUSH),
                KVM_REQ_MMU_RELOAD | KVM_REQ_TLB_FLUSH
            );
        }
        assert_eq!(r.fault(&mut v0, GVA, Access::READ), FaultOutcome::Retry);
        r.audit();
        r.mmu.kvm_mmu_reload(&mut v0).unwrap();
        r.mmu.kvm_mmu_reload(&mut v1).unwrap();
        assert_eq!(v0.root_hpa(), v1.root_hpa());
        assert_eq!(r.fault(&mut v0, GVA, Access::READ), FaultOutcome::Fixed);
        assert_eq!(r.mmu.shadow_translate(&v1, GVA).unwrap().gpa_page, Some(d));
        r.audit();
        r.mmu.kvm_mmu_unload(&mut v0);
        r.mmu.kvm_mmu_unload(&mut v1);
        r.mmu.kvm_mmu_zap_all();
        r.audit();
    }
}
