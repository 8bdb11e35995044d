//! Consistency checks of the MMU's data structures (KVM's old `mmu_audit.c`, in spirit) and
//! the shadow side of the oracle's comparison. Both take the read lock.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout;
use shadowlab_policies::SyncPolicy;

use super::page::{SpIdx, SpteRef};
use super::shadow_walk::{shadow_walk, ShadowMiss, ShadowTranslation};
use super::spte::{is_present, Access, SPTE_W};
use super::vcpu::VcpuMmu;
use super::Mmu;

impl<P: SyncPolicy> Mmu<P> {
    /// What the shadow tables of `v`'s current root say about `gva` (no A/D updates): the
    /// other side of the oracle's comparison with [`super::guest_translate`].
    pub fn shadow_translate(&self, v: &VcpuMmu, gva: u64) -> Result<ShadowTranslation, ShadowMiss> {
        let _g = self.state.read();
        let Some(root) = v.root_hpa() else {
            return Err(ShadowMiss::NotPresent { level: 4 });
        };
        shadow_walk(&self.mem, root, gva, Access::READ, false)
    }

    /// Checks the invariants the algorithm relies on, returning the first violation:
    /// hash/rmap/parent-pointer consistency, `unsync_children` = number of bitmap bits, every
    /// unsync page's parents marked, and **no writable SPTE maps a write-tracked gfn unless
    /// every shadow page of that gfn is an unsync leaf** (the write-protection invariant).
    pub fn audit(&self) -> Result<(), String> {
        let st = self.state.read();
        let mut allocated = 0usize;
        for (i, s) in st.sp.iter().enumerate() {
            if !s.allocated {
                continue;
            }
            allocated += 1;
            let idx = SpIdx(i as u32);
            let p = self.sp(idx);
            if p.is_invalid() {
                if s.root_count == 0 {
                    return Err(format!("{idx:?} is invalid, unreferenced, yet not freed"));
                }
                continue;
            }
            let role = p.role();
            if !st.page_hash.get(&p.gfn()).is_some_and(|l| l.contains(&idx)) {
                return Err(format!(
                    "{idx:?} (gfn {:#x}) missing from the page hash",
                    p.gfn()
                ));
            }
            let bits = p.unsync_child_indices().len() as u32;
            if bits != p.unsync_children.load(Ordering::Relaxed) {
                return Err(format!(
                    "{idx:?}: unsync_children {} != {bits} bitmap bits",
                    p.unsync_children.load(Ordering::Relaxed)
                ));
            }
            if (p.unsync.load(Ordering::Relaxed) || bits != 0)
                && !s.parent_ptes.iter().all(|r| {
                    let sp = self.sp(r.sp);
                    sp.unsync_child_indices().contains(&r.index)
                })
            {
                return Err(format!(
                    "{idx:?} is unsync(-children) but a parent does not have its bit"
                ));
            }
            for r in &s.parent_ptes {
                let spte = self.load_spte(*r);
                if self.sp_of_spte(spte) != Some(idx) || !is_present(spte) {
                    return Err(format!("{idx:?}: parent {r:?} does not point at it"));
                }
            }
            for index in 0..512u16 {
                if role.level == 4 && index as usize == layout::MONITOR_SLOT {
                    continue;
                }
                let r = SpteRef { sp: idx, index };
                let spte = self.load_spte(r);
                if !is_present(spte) {
                    continue;
                }
                if role.level > 1 {
                    let Some(ch) = self.sp_of_spte(spte) else {
                        return Err(format!("{r:?}: non-leaf SPTE {spte:#x} outside the pool"));
                    };
                    let cs = &st.sp[ch.0 as usize];
                    if !cs.allocated
                        || self.sp(ch).role().level != role.level - 1
                        || !cs.parent_ptes.contains(&r)
                    {
                        return Err(format!("{r:?}: bad link to {ch:?}"));
                    }
                } else {
                    let Some(gfn) = self.leaf_gfn(spte) else {
                        return Err(format!("{r:?}: leaf SPTE {spte:#x} maps no guest RAM"));
                    };
                    if !st.rmap.get(&gfn).is_some_and(|l| l.contains(&r)) {
                        return Err(format!(
                            "{r:?}: leaf for gfn {gfn:#x} missing from the rmap"
                        ));
                    }
                    if spte & SPTE_W != 0 {
                        if let Some(list) = st.page_hash.get(&gfn) {
                            let ok = list.iter().all(|&s| {
                                let sp = self.sp(s);
                                sp.role().level == 1 && sp.unsync.load(Ordering::Relaxed)
                            });
                            if !ok {
                                return Err(format!(
                                    "{r:?}: writable SPTE maps write-tracked gfn {gfn:#x}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        for (gfn, refs) in &st.rmap {
            for r in refs {
                let spte = self.load_spte(*r);
                if !is_present(spte) || self.leaf_gfn(spte) != Some(*gfn) {
                    return Err(format!("rmap of gfn {gfn:#x} has stale {r:?}"));
                }
            }
        }
        if allocated + st.free.len() != self.pages.len() {
            return Err(format!(
                "{allocated} allocated + {} free != {} pool pages",
                st.free.len(),
                self.pages.len()
            ));
        }
        Ok(())
    }
}

/// The oracle's comparison for one address, after the guest's flush: the shadow tables may
/// lack a translation (they are a cache, filled by faults), but one they have must be the
/// guest's: same guest frame, same U and X, SPTE_MMU_WRITABLE exactly when the guest allows
/// writes, and W granted only if the guest allows it (W may be withheld for write tracking).
pub fn check_translation(
    gva: u64,
    guest: &Result<super::GuestTranslation, super::GuestFault>,
    shadow: &Result<ShadowTranslation, ShadowMiss>,
) -> Result<(), String> {
    use super::spte::{ACC_EXEC, ACC_USER, ACC_WRITE};
    let t = match shadow {
        Err(ShadowMiss::NotPresent { .. }) => return Ok(()),
        Err(m) => return Err(format!("{gva:#x}: shadow walk failed: {m:?}")),
        Ok(t) => t,
    };
    let g = match guest {
        Ok(g) => g,
        Err(f) => {
            return Err(format!(
                "{gva:#x}: shadow maps {:?} but the guest faults ({f})",
                t.gpa_page
            ))
        }
    };
    if t.gpa_page != Some(g.gpa_page) {
        return Err(format!(
            "{gva:#x}: shadow maps gpa {:?}, guest maps {:#x}",
            t.gpa_page, g.gpa_page
        ));
    }
    let ux = ACC_USER | ACC_EXEC;
    if t.access & ux != g.access & ux
        || t.mmu_writable != (g.access & ACC_WRITE != 0)
        || (t.access & ACC_WRITE != 0 && g.access & ACC_WRITE == 0)
    {
        return Err(format!(
            "{gva:#x}: permissions differ: shadow {:#x} (mmu-writable {}), guest {:#x}",
            t.access, t.mmu_writable, g.access
        ));
    }
    Ok(())
}
