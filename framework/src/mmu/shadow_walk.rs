//! A hardware-like walk of the *shadow* tables in the pool: what the CPU does on a TLB miss
//! when CR3 points at a shadow root. The sim backend's vCPUs use it on every TLB miss (with
//! `set_ad`, as hardware sets the shadow A/D bits), and the oracle uses it (without) to
//! compare against the guest's own tables.
//!
//! Memory ordering, deliberately: the loads of non-leaf SPTEs are `Acquire` (the walker
//! follows a pointer into a freshly linked table and must see it zeroed: on hardware that is
//! the address dependency), but the load of the **leaf** SPTE is `Relaxed`. That leaf load is
//! the "load of SPTE.W" of the unsync protocol, and under the C11 model nothing but the
//! build's `is_unsync_root` policy may order it before the later loads of `unsync` flags; a
//! walker that made it an acquire would silently repair the `acquire-load` policy.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout;

use super::spte::{
    is_present, spte_access, Access, ACC_ALL, SPTE_A, SPTE_ADDR, SPTE_D, SPTE_MMU_WRITABLE,
};
use crate::mem::GuestMemory;

/// A translation found in the shadow tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowTranslation {
    /// Machine-physical address of the page.
    pub mpa_page: u64,
    /// The guest-physical page it backs (`None`: not guest RAM, e.g. the monitor).
    pub gpa_page: Option<u64>,
    /// ACC_* permissions granted now (W may be withheld for write tracking).
    pub access: u8,
    /// The guest allows writes (SPTE_MMU_WRITABLE on the leaf).
    pub mmu_writable: bool,
    /// The leaf SPTE as read.
    pub spte: u64,
}

/// Why a shadow walk found no usable translation (a hardware #PF on shadow tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowMiss {
    /// An SPTE at `level` is not present.
    NotPresent {
        /// Level of the missing entry.
        level: u8,
    },
    /// The translation exists but does not permit the access.
    Protection,
    /// An entry points somewhere the MMU never points (pool/RAM/monitor check failed). Only a
    /// VMM bug or a racing reuse could produce it; treated as a miss.
    Corrupt {
        /// Level of the entry.
        level: u8,
        /// The entry.
        spte: u64,
    },
}

/// Walks the shadow tables rooted at machine-physical `root` for `gva`. With `set_ad`, sets A
/// at every level and D on the leaf for a write, as the hardware walker does (atomic ORs:
/// the MMU may be rewriting the same entries).
pub fn shadow_walk(
    mem: &GuestMemory,
    root: u64,
    gva: u64,
    access: Access,
    set_ad: bool,
) -> Result<ShadowTranslation, ShadowMiss> {
    let region = mem.region();
    let mut table = root;
    let mut acc = ACC_ALL;
    let mut entries = [0u64; 4];
    let mut spte = 0;
    for level in (1..=4u32).rev() {
        let addr = table + layout::pt_index(gva, level) as u64 * 8;
        let order = if level == 1 {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        spte = region
            .load_u64(addr, order)
            .map_err(|_| ShadowMiss::Corrupt {
                level: level as u8,
                spte: 0,
            })?;
        if !is_present(spte) {
            return Err(ShadowMiss::NotPresent { level: level as u8 });
        }
        acc &= spte_access(spte);
        entries[level as usize - 1] = addr;
        table = spte & SPTE_ADDR;
        let ok = if level > 1 {
            mem.pool_index(table).is_some() || mem.is_monitor_mpa(table)
        } else {
            mem.mfn_to_gfn(table >> 12).is_some() || mem.is_monitor_mpa(table)
        };
        if !ok {
            return Err(ShadowMiss::Corrupt {
                level: level as u8,
                spte,
            });
        }
    }
    if !access.permitted_by(acc) {
        return Err(ShadowMiss::Protection);
    }
    if set_ad {
        for (i, &e) in entries.iter().enumerate().rev() {
            let want = if i == 0 && access.is_write() {
                SPTE_A | SPTE_D
            } else {
                SPTE_A
            };
            // Only write when needed: the common case is a walk that finds them set.
            let cur = region.load_u64(e, Ordering::Relaxed).unwrap_or(0);
            if cur & want != want && is_present(cur) {
                let _ = region.fetch_or_u64(e, want, Ordering::Relaxed);
            }
        }
    }
    Ok(ShadowTranslation {
        mpa_page: table,
        gpa_page: mem.mfn_to_gfn(table >> 12).map(|g| g << 12),
        access: acc,
        mmu_writable: spte & SPTE_MMU_WRITABLE != 0,
        spte,
    })
}
