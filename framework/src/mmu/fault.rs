//! The page-fault path: `kvm_mmu_page_fault` → `FNAME(page_fault)` → `FNAME(fetch)`, with
//! `kvm_mmu_get_page`, `link_shadow_page` and `mmu_set_spte`.

use shadowlab_abi::layout;
use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, Role, SpIdx, SpState, SpteRef};
use super::spte::{
    is_present, make_leaf_spte, needs_flush, pferr, Access, ACC_WRITE, SPTE_ADDR, SPTE_NONLEAF,
};
use super::stats::{Counter, CounterBlock};
use super::vcpu::VcpuMmu;
use super::walk::{walk_addr, GuestFault, GuestWalker, WalkFail};
use super::zap::ZapList;
use super::{Mmu, MmuError, KVM_REQ_MMU_RELOAD, MIN_FREE_PAGES};
use shadowlab_abi::layout::is_canonical;

/// What the backend must do after [`Mmu::page_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The shadow tables now map the address: re-run the access.
    Fixed,
    /// Something changed under the fault (a guest PTE, the root): handle pending requests and
    /// re-run the access; it will fault again if it still must.
    Retry,
    /// The guest's own tables deny the access: inject this fault.
    GuestFault(GuestFault),
    /// A write to a write-protected guest page table that cannot be unsynced: emulate the
    /// store with [`Mmu::emulate_write`] (at `gpa`, guest-physical) and skip the instruction.
    Emulate {
        /// Guest-physical address written.
        gpa: u64,
    },
}

impl<P: SyncPolicy> Mmu<P> {
    /// A #PF on the shadow tables at `gva` (KVM's `kvm_mmu_page_fault` → `FNAME(page_fault)`).
    ///
    /// Walks the guest tables without the lock (setting guest A/D bits), then under the write
    /// lock refills the pool, checks the root, and links shadow pages down to the leaf
    /// ([`Mmu::fetch`], which re-checks each guest PTE of the walk as it goes). Differs from KVM: no
    /// large pages, no MMIO/async page faults; the monitor's PML4 slot is never the guest's,
    /// so an access there is a protection fault.
    pub fn page_fault(
        &self,
        v: &mut VcpuMmu,
        gva: u64,
        access: Access,
    ) -> Result<FaultOutcome, MmuError> {
        let c = self.counters(v.id);
        c.inc(Counter::faults);
        let pgd = v.pgd.ok_or(MmuError::NoRoot(v.id))?;
        if is_canonical(gva) && layout::pt_index(gva, 4) == layout::MONITOR_SLOT {
            c.inc(Counter::guest_faults);
            return Ok(FaultOutcome::GuestFault(GuestFault {
                gva,
                error_code: pferr::PRESENT | access.pfec(),
                general_protection: false,
            }));
        }
        let gw = match walk_addr(&self.mem, pgd, gva, access, true) {
            Ok(w) => w,
            Err(WalkFail::Fault(f)) => {
                c.inc(Counter::guest_faults);
                return Ok(FaultOutcome::GuestFault(f));
            }
            Err(WalkFail::Raced) => {
                c.inc(Counter::fault_retries);
                return Ok(FaultOutcome::Retry);
            }
        };
        let mut st = self.state.write();
        self.make_mmu_pages_available(&mut st, c, MIN_FREE_PAGES)?;
        let root = match v.root {
            Some(r) if !self.sp(r).is_invalid() => r,
            _ => {
                // The root was zapped (or never allocated after a zap): the backend reloads
                // it before re-running, as for KVM_REQ_MMU_RELOAD.
                if let Some(s) = self.vcpus.get(v.id) {
                    s.make_request(KVM_REQ_MMU_RELOAD);
                }
                c.inc(Counter::fault_retries);
                return Ok(FaultOutcome::Retry);
            }
        };
        self.fetch(&mut st, c, root, &gw, access)
    }

    /// `FNAME(gpte_changed)`: whether the guest PTE the walk read at `level` has changed since.
    ///
    /// Only meaningful once the table holding it is write-protected (or unsync, in which case
    /// the guest must flush after changing it): [`Mmu::fetch`] asks after shadowing each table,
    /// when the write-protect flush has completed every store a vCPU could still make through
    /// a writable TLB entry.
    fn gpte_changed(&self, gw: &GuestWalker, level: u32) -> bool {
        let i = level as usize - 1;
        self.mem
            .read_gpa_u64(gw.pte_gpa[i], std::sync::atomic::Ordering::Acquire)
            .map_or(true, |v| v != gw.ptes[i])
    }

    /// `FNAME(fetch)`: from the root down, find or create the shadow page for each guest
    /// table of the walk and link it, then set the leaf SPTE and prefetch its neighbours
    /// ([`Mmu::pte_prefetch`]; as in KVM also when the write is sent to emulation).
    ///
    /// The walk was taken without the lock, so each guest PTE it read is re-checked
    /// (`FNAME(gpte_changed)`) once the table holding it is shadowed: the root's before the
    /// loop, every other level right after `kvm_mmu_get_page` (and `mmu_sync_children`) for
    /// its table and before the link. The order matters. Shadowing a table write-protects it
    /// and flushes remote TLBs; until that flush reaches it, another vCPU holding a writable
    /// TLB entry for the table can still store to it (hardware completes the store before it
    /// takes the flush IPI), and the walk may predate that store. Re-read after the flush, the
    /// entry shows the store, and the fault is retried from a new walk: otherwise the SPTE
    /// would be built from the stale walk in a page just marked synced, and the guest's own
    /// INVLPG or flush after its store would find nothing to sync. (A table that stays unsync
    /// needs no such care: the guest flushes after writing it, and that flush syncs it.)
    ///
    /// Differs from KVM: the top-level check is the PML4E (no PAE roots); on a retry, zaps
    /// already prepared on the way down are committed first.
    fn fetch(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        root: SpIdx,
        gw: &GuestWalker,
        access: Access,
    ) -> Result<FaultOutcome, MmuError> {
        let mut zap = ZapList::default();
        // "Verify that the top-level gpte is still there. Since the page is a root page, it is
        // either write protected (and cannot be changed from now on) or it is invalid" (KVM).
        if self.gpte_changed(gw, 4) {
            c.inc(Counter::fault_retries);
            return Ok(FaultOutcome::Retry);
        }
        let mut sp = root;
        for level in (2..=4u32).rev() {
            // `clear_sp_write_flooding_count`: the guest is really using this table.
            self.sp(sp)
                .write_flooding_count
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let r = SpteRef {
                sp,
                index: layout::pt_index(gw.gva, level) as u16,
            };
            let want_gfn = gw.table_gfn[level as usize - 2];
            let want_role = Role {
                level: level as u8 - 1,
                access: gw.pt_access[level as usize - 1],
            };
            let spte = self.load_spte(r);
            let mut linked = None;
            if is_present(spte) {
                match self.sp_of_spte(spte) {
                    Some(child)
                        if self.sp(child).gfn() == want_gfn
                            && self.sp(child).role() == want_role
                            && !self.sp(child).is_invalid() =>
                    {
                        linked = Some(child);
                    }
                    // A link to a page shadowing something else (the guest changed an upper
                    // entry in a way that was not tracked): drop it and link the right one.
                    _ => {
                        self.mmu_page_zap_pte(st, r);
                        zap.flush = true;
                    }
                }
            }
            let child = match linked {
                Some(child) => child,
                None => {
                    let child = self.kvm_mmu_get_page(st, c, want_gfn, want_role)?;
                    // As KVM's FNAME(fetch) since 2021 ("KVM: X86: Synchronize the shadow
                    // pagetable before link it"): the guest need not flush when it makes a
                    // non-present entry present, so unsync pages below an upper-level page
                    // must be synced before the page becomes reachable from this root, or the
                    // guest could use stale entries. (A leaf page was re-read by
                    // kvm_mmu_get_page.)
                    if self
                        .sp(child)
                        .unsync_children
                        .load(std::sync::atomic::Ordering::Relaxed)
                        != 0
                    {
                        self.mmu_sync_children(st, c, child);
                    }
                    child
                }
            };
            // "Verify that the gpte in the page we've just write protected is still there"
            // (KVM): the entry of the walk inside the child's table, read again after the
            // flushes above. Checked for a page already linked too, as KVM does.
            if self.gpte_changed(gw, level - 1) {
                c.inc(Counter::fault_retries);
                self.commit_zap(st, c, zap);
                return Ok(FaultOutcome::Retry);
            }
            if linked.is_none() {
                self.link_shadow_page(st, r, child);
            }
            sp = child;
        }
        self.sp(sp)
            .write_flooding_count
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let r = SpteRef {
            sp,
            index: layout::pt_index(gw.gva, 1) as u16,
        };
        let out = self.mmu_set_spte(st, c, r, gw, access, &mut zap);
        self.pte_prefetch(st, c, r);
        self.commit_zap(st, c, zap);
        Ok(out)
    }

    /// `link_shadow_page`: points `r` at `child`. If the child still has unsync pages below
    /// it (a leaf page is unsync, or `unsync_children`), its new parents are marked *before*
    /// the link is published (Release store), so a vCPU that walks the new link and then
    /// flushes finds its root flagged.
    fn link_shadow_page(&self, st: &mut MmuState, r: SpteRef, child: SpIdx) {
        st.sp[child.0 as usize].parent_ptes.push(r);
        let ch = self.sp(child);
        if ch.unsync.load(std::sync::atomic::Ordering::Relaxed)
            || ch
                .unsync_children
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0
        {
            self.mark_unsync(st, r);
        }
        self.store_spte(r, ch.spt | SPTE_NONLEAF);
    }

    /// `mmu_set_spte` + `make_spte`: sets the leaf SPTE for the walk's frame with the walk's
    /// permissions. W is granted only if the guest allows it, the guest PTE is dirty (else the
    /// first write must fault to set D: `FNAME(protect_clean_gpte)`), and the frame is not a
    /// shadowed page table, or is one that [`Mmu::mmu_try_to_unsync_pages`] may unsync. A
    /// write that cannot be granted is sent to emulation.
    fn mmu_set_spte(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        r: SpteRef,
        gw: &GuestWalker,
        access: Access,
        zap: &mut ZapList,
    ) -> FaultOutcome {
        let gfn = gw.gfn;
        // The walker only returns frames inside guest RAM.
        let Some(mfn) = self.mem.gfn_to_mfn(gfn) else {
            return FaultOutcome::GuestFault(GuestFault {
                gva: gw.gva,
                error_code: pferr::PRESENT | pferr::RSVD | access.pfec(),
                general_protection: false,
            });
        };
        let pte_access = gw.pte_access();
        let mut old = self.load_spte(r);
        if is_present(old) && old & SPTE_ADDR != mfn << 12 {
            self.drop_leaf_spte(st, r);
            zap.flush = true;
            old = 0;
        }
        let mut writable = false;
        let mut emulate = false;
        if pte_access & ACC_WRITE != 0 && gw.is_dirty() {
            if self.mmu_try_to_unsync_pages(st, c, gfn, true, false) {
                writable = true;
            } else if access.is_write() {
                emulate = true;
            }
        }
        let new = make_leaf_spte(mfn, pte_access, writable);
        // For an unsynced page this store is "SPTE.W = 1" of the protocol: it comes after the
        // fence(Release) in mmu_try_to_unsync_pages, so a relaxed store suffices (and is what
        // hardware-facing code does).
        self.store_spte(r, new);
        if !is_present(old) {
            st.rmap_add(gfn, r);
        }
        if needs_flush(old, new) {
            zap.flush = true;
        }
        if emulate {
            c.inc(Counter::emulations);
            FaultOutcome::Emulate { gpa: gw.gpa() }
        } else {
            FaultOutcome::Fixed
        }
    }

    /// `kvm_mmu_get_page` (`kvm_mmu_find_shadow_page` + `kvm_mmu_alloc_shadow_page`): the
    /// shadow page for (`gfn`, `role`), created if needed. On the way, an unsync leaf page of
    /// the same gfn is zapped when the gfn is now wanted as an upper-level table (a gfn cannot
    /// be both an unsync leaf and a write-protected upper table), and a found unsync page is
    /// re-read before it is linked again, but left unsync. A new page write-protects its gfn
    /// everywhere (`account_shadowed`), with a remote TLB flush if a writable mapping existed.
    ///
    /// The found unsync page, as KVM since 2021 ("The page is good, but is stale"):
    /// `kvm_sync_page` brings its SPTEs up to date but neither write-protects the gfn nor marks
    /// the page synced. The guest may still be writing the table through a writable mapping;
    /// a page marked synced here would hide those writes from the guest's next flush, while
    /// one left unsync is re-read by it (the new link marks the new parents unsync). The
    /// write protection is paid when the guest invalidates, not on every relink.
    pub(super) fn kvm_mmu_get_page(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        gfn: u64,
        role: Role,
    ) -> Result<SpIdx, MmuError> {
        let mut zap = ZapList::default();
        let mut found = None;
        if let Some(list) = st.page_hash.get(&gfn).cloned() {
            for sp in list {
                let p = self.sp(sp);
                if p.role() == role {
                    found = Some(sp);
                } else if role.level > 1 && p.unsync.load(std::sync::atomic::Ordering::Relaxed) {
                    self.kvm_mmu_prepare_zap_page(st, c, sp, &mut zap);
                }
            }
        }
        if let Some(sp) = found {
            if self
                .sp(sp)
                .unsync
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                zap.flush |= self.kvm_sync_page(st, c, sp);
            }
            self.commit_zap(st, c, zap);
            return Ok(sp);
        }
        let sp = match st.free.pop() {
            Some(sp) => sp,
            None => {
                self.commit_zap(st, c, zap);
                return Err(MmuError::PoolExhausted {
                    pool: self.pages.len() as u64,
                    free: 0,
                });
            }
        };
        let p = self.sp(sp);
        // A recycled root still holds the monitor's entry (a zap leaves it): the zeroing
        // clears it, which the host must hear about like any other clear (logged after it, as
        // in `store_spte`).
        let monitor_slot = SpteRef {
            sp,
            index: layout::MONITOR_SLOT as u16,
        };
        let old_monitor_slot = if self.host_coherence_log_enabled() {
            self.load_spte(monitor_slot)
        } else {
            0
        };
        self.mem.region().zero(p.spt, 4096)?;
        self.log_spte_change(monitor_slot, old_monitor_slot, 0);
        p.init(gfn, role);
        let s = &mut st.sp[sp.0 as usize];
        *s = SpState {
            allocated: true,
            gen: s.gen.wrapping_add(1),
            root_count: 0,
            parent_ptes: Default::default(),
        };
        let gen = s.gen;
        st.page_hash.entry(gfn).or_default().push(sp);
        st.active.push_back((sp, gen));
        if st.active.len() > 4 * self.pages.len() {
            let sps = &st.sp;
            st.active
                .retain(|(i, g)| sps[i.0 as usize].allocated && sps[i.0 as usize].gen == *g);
        }
        c.inc(Counter::pages_created);
        zap.flush |= self.rmap_write_protect(st, c, gfn);
        self.commit_zap(st, c, zap);
        Ok(sp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::spte::{SPTE_MMU_WRITABLE, SPTE_W};
    use crate::mmu::testutil::{Rig, GVA};
    use shadowlab_abi::layout::pte;

    #[test]
    fn fault_links_four_levels_and_maps_the_backing_frame() {
        let mut r = Rig::new(1);
        let data = r.g.frame();
        r.g.map(r.root, GVA, data, pte::P | pte::W);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, GVA).unwrap();
        assert_eq!(t.gpa_page, Some(data));
        assert_eq!(t.mpa_page, r.g.mem.gpa_to_mpa(data).unwrap());
        assert_ne!(t.mpa_page, data, "the frame map is a permutation");
        // Clean guest PTE: mapped read-only until the first write sets D.
        assert!(t.mmu_writable);
        assert_eq!(t.spte & SPTE_W, 0);
        assert_eq!(r.fault(&mut v, GVA, Access::WRITE), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, GVA).unwrap();
        assert_ne!(t.spte & SPTE_W, 0);
        assert_ne!(r.g.get(r.g.entry(r.root, GVA, 1)) & pte::D, 0);
        let s = r.mmu.stats();
        assert_eq!(s.faults, 2);
        assert_eq!(s.pages_created, 4); // root + PDPT + PD + PT
        r.audit();
    }

    #[test]
    fn guest_page_tables_are_write_protected_once_shadowed() {
        let mut r = Rig::new(1);
        let data = r.g.frame();
        let leaf = r.g.map(r.root, GVA, data, pte::P | pte::W | pte::D);
        // Map the PD (an upper-level table) and the PT (a leaf table) through the direct map.
        let pd = r.g.entry(r.root, GVA, 2) & !0xfff;
        let pt = leaf & !0xfff;
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        let via_pd = layout::direct_map(pd);
        let via_pt = layout::direct_map(pt);
        r.direct_map_page(pd);
        r.direct_map_page(pt);
        assert_eq!(r.fault(&mut v, via_pd, Access::READ), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, via_pd).unwrap();
        assert_eq!(
            t.spte & SPTE_W,
            0,
            "a shadowed upper table is never writable"
        );
        assert_ne!(t.spte & SPTE_MMU_WRITABLE, 0);
        // Writing the upper-level table: cannot unsync, must be emulated.
        assert_eq!(
            r.fault(&mut v, via_pd, Access::WRITE),
            FaultOutcome::Emulate { gpa: pd }
        );
        // Writing the leaf table: unsync, and W granted.
        assert_eq!(r.fault(&mut v, via_pt, Access::WRITE), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, via_pt).unwrap();
        assert_ne!(t.spte & SPTE_W, 0);
        assert_eq!(r.mmu.stats().unsyncs, 1);
        assert!(
            r.mmu
                .root_page(&v)
                .unwrap()
                .unsync_children
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        r.audit();
    }

    #[test]
    fn guest_faults_are_reflected_not_mapped() {
        let mut r = Rig::new(1);
        let data = r.g.frame();
        let leaf = r.g.map(r.root, GVA, data, pte::P);
        let mut v = r.vcpu(0);
        match r.fault(&mut v, GVA, Access::WRITE) {
            FaultOutcome::GuestFault(f) => assert_eq!(f.error_code, pferr::PRESENT | pferr::WRITE),
            o => panic!("{o:?}"),
        }
        // Bad input: a PTE into the pool or beyond RAM gets a reserved-bit fault, and the
        // shadow tables gain no mapping for it.
        for bad in [
            r.g.mem.pool_base(),
            r.g.mem.pool_base() + 4096,
            r.g.mem.monitor_mpa(),
            r.g.mem.ram_bytes(),
        ] {
            r.g.set(leaf, bad | pte::P | pte::W);
            match r.fault(&mut v, GVA, Access::READ) {
                FaultOutcome::GuestFault(f) => assert!(f.is_reserved(), "{f:?}"),
                o => panic!("{o:?}"),
            }
            assert!(r.mmu.shadow_translate(&v, GVA).is_err());
        }
        // The monitor slot is never the guest's.
        match r.fault(&mut v, layout::MONITOR_BASE, Access::READ) {
            FaultOutcome::GuestFault(f) => assert_eq!(f.error_code, pferr::PRESENT),
            o => panic!("{o:?}"),
        }
        assert_eq!(r.mmu.stats().guest_faults, 6);
        r.audit();
    }

    #[test]
    fn self_mapping_table_is_shadowed_at_every_level_and_write_protected() {
        let r = Rig::new(1);
        // PML4[5] → PML4: the recursive mapping. The gva with indices 5,5,5,5 maps the PML4
        // page itself, so one gfn is shadowed at four levels.
        r.g.set(r.root + 5 * 8, r.root | pte::P | pte::W | pte::D);
        let rec = (5u64 << 39) | (5 << 30) | (5 << 21) | (5 << 12);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, rec, Access::READ), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, rec).unwrap();
        assert_eq!(t.gpa_page, Some(r.root));
        assert_eq!(t.spte & SPTE_W, 0, "the PML4 is a shadowed upper table");
        // A write through it must be emulated, never granted.
        assert_eq!(
            r.fault(&mut v, rec + 8, Access::WRITE),
            FaultOutcome::Emulate { gpa: r.root + 8 }
        );
        r.audit();
    }

    #[test]
    fn fault_without_cr3_is_an_error() {
        let r = Rig::new(1);
        let mut v = r.vcpu_no_cr3(0);
        assert!(matches!(
            r.mmu.page_fault(&mut v, GVA, Access::READ),
            Err(MmuError::NoRoot(0))
        ));
    }
}
