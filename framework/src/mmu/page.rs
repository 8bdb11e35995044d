//! Shadow pages (KVM's `struct kvm_mmu_page`) and the lock-protected MMU state: the page hash,
//! the reverse map, parent pointers, the free list and the active (LRU) list.
//!
//! A [`ShadowPage`] exists for every pool page, for the life of the MMU; allocation only
//! changes its fields. Its fields are atomics so that the two KVM reads without `mmu_lock`
//! (`is_unsync_root` on `unsync`/`unsync_children`, and the fast CR3 switch on `invalid`) are
//! data-race free; every *write* to them happens under the MMU write lock. The non-atomic part
//! of KVM's struct (`parent_ptes`, `root_count`, list links) lives in [`SpState`] inside the
//! locked [`MmuState`], indexed by the same pool index.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hashbrown::HashMap;
use smallvec::SmallVec;

use shadowlab_policies::UnsyncFlags;

/// Index of a page in the shadow pool (and of its [`ShadowPage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpIdx(pub u32);

/// The location of one SPTE: shadow page and entry index (KVM passes `u64 *sptep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpteRef {
    /// The page holding the SPTE.
    pub sp: SpIdx,
    /// Its index in the page, `0..512`.
    pub index: u16,
}

/// What a shadow page shadows: the level of the guest table and the access allowed by the
/// guest entries above it (KVM's `union kvm_mmu_page_role`, reduced to 4-level paging with
/// 4 KiB pages, no `direct` pages and no quadrants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Role {
    /// 4 (PML4) .. 1 (PT).
    pub level: u8,
    /// ACC_* bits accumulated from the guest entries above this table.
    pub access: u8,
}

impl Role {
    /// The role of a root.
    pub const ROOT: Role = Role {
        level: 4,
        access: super::spte::ACC_ALL,
    };

    fn pack(self) -> u32 {
        self.level as u32 | (self.access as u32) << 8
    }

    fn unpack(v: u32) -> Role {
        Role {
            level: v as u8,
            access: (v >> 8) as u8,
        }
    }
}

/// One shadow page: a 4 KiB shadow table in the pool and what KVM keeps beside it.
#[derive(Debug)]
pub struct ShadowPage {
    /// Machine-physical address of the table (`sp->spt`).
    pub(crate) spt: u64,
    gfn: AtomicU64,
    role: AtomicU32,
    /// The root (or a page it holds) was zapped while in use (`role.invalid`). Read without
    /// the lock by the fast CR3 switch.
    invalid: AtomicBool,
    /// `sp->unsync`: a leaf page whose guest table may have changed since it was last synced.
    pub(crate) unsync: AtomicBool,
    /// `sp->unsync_children`: number of bits set in `unsync_child_bitmap`.
    pub(crate) unsync_children: AtomicU32,
    /// `sp->unsync_child_bitmap`: which entries lead to an unsync page.
    unsync_child_bitmap: [AtomicU64; 8],
    /// `sp->write_flooding_count`: emulated writes since the page was last used by a walk.
    pub(crate) write_flooding_count: AtomicU32,
}

impl UnsyncFlags for ShadowPage {
    #[inline(always)]
    fn load_unsync(&self, order: Ordering) -> bool {
        self.unsync.load(order)
    }
    #[inline(always)]
    fn load_unsync_children(&self, order: Ordering) -> u32 {
        self.unsync_children.load(order)
    }
}

impl ShadowPage {
    pub(crate) fn new(spt: u64) -> Self {
        ShadowPage {
            spt,
            gfn: AtomicU64::new(0),
            role: AtomicU32::new(0),
            invalid: AtomicBool::new(false),
            unsync: AtomicBool::new(false),
            unsync_children: AtomicU32::new(0),
            unsync_child_bitmap: Default::default(),
            write_flooding_count: AtomicU32::new(0),
        }
    }

    /// The guest frame this page shadows.
    pub fn gfn(&self) -> u64 {
        self.gfn.load(Ordering::Relaxed)
    }
    /// Its role.
    pub fn role(&self) -> Role {
        Role::unpack(self.role.load(Ordering::Relaxed))
    }
    /// Whether it was invalidated (zapped while a vCPU still used it as a root).
    pub fn is_invalid(&self) -> bool {
        self.invalid.load(Ordering::Acquire)
    }
    /// Machine-physical address of its table.
    pub fn spt(&self) -> u64 {
        self.spt
    }

    /// (Re)initialises the page for a new use. Write lock held; the page is not reachable.
    pub(crate) fn init(&self, gfn: u64, role: Role) {
        self.gfn.store(gfn, Ordering::Relaxed);
        self.role.store(role.pack(), Ordering::Relaxed);
        self.invalid.store(false, Ordering::Relaxed);
        self.unsync.store(false, Ordering::Relaxed);
        self.unsync_children.store(0, Ordering::Relaxed);
        for w in &self.unsync_child_bitmap {
            w.store(0, Ordering::Relaxed);
        }
        self.write_flooding_count.store(0, Ordering::Relaxed);
    }

    pub(crate) fn set_invalid(&self) {
        self.invalid.store(true, Ordering::Release);
    }

    /// `test_and_set_bit(index, sp->unsync_child_bitmap)`: returns whether it was set.
    pub(crate) fn test_and_set_child(&self, index: u16) -> bool {
        let bit = 1u64 << (index % 64);
        self.unsync_child_bitmap[index as usize / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0
    }

    /// KVM's `clear_unsync_child_bit`: clears the bit and keeps `unsync_children` equal to the
    /// number of set bits.
    pub(crate) fn clear_unsync_child_bit(&self, index: u16) {
        let bit = 1u64 << (index % 64);
        let old = self.unsync_child_bitmap[index as usize / 64].fetch_and(!bit, Ordering::Relaxed);
        if old & bit != 0 {
            self.unsync_children.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Clears the whole bitmap and the count (the page's children were all unlinked).
    pub(crate) fn clear_all_unsync_children(&self) {
        for w in &self.unsync_child_bitmap {
            w.store(0, Ordering::Relaxed);
        }
        self.unsync_children.store(0, Ordering::Relaxed);
    }

    /// The set bits of the bitmap, in index order.
    pub(crate) fn unsync_child_indices(&self) -> SmallVec<[u16; 8]> {
        let mut out = SmallVec::new();
        for (w, word) in self.unsync_child_bitmap.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros();
                out.push((w * 64) as u16 + b as u16);
                bits &= bits - 1;
            }
        }
        out
    }
}

/// The lock-protected half of a shadow page.
#[derive(Debug, Default, Clone)]
pub(crate) struct SpState {
    /// In use (in the hash, or an invalid root still referenced).
    pub allocated: bool,
    /// Bumped at every allocation: stale active-list entries are recognised by it.
    pub gen: u32,
    /// `sp->root_count`: vCPUs using this page as current or cached root.
    pub root_count: u32,
    /// `sp->parent_ptes`: the SPTEs that point at this page.
    pub parent_ptes: SmallVec<[SpteRef; 4]>,
}

/// A small multiplicative hasher for gfn keys (FxHash's mixing step): deterministic across
/// runs (so a seeded single-vCPU run is reproducible) and cheaper than SipHash on the fault
/// path. Keys are guest frame numbers the VMM has already bounds-checked against guest RAM, so
/// hash flooding by a guest is limited to its own RAM size.
#[derive(Default, Clone, Copy, Debug)]
pub struct GfnHasher(u64);

impl Hasher for GfnHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub(crate) type GfnMap<V> = HashMap<u64, V, BuildHasherDefault<GfnHasher>>;

/// Everything the MMU write lock protects.
#[derive(Debug)]
pub(crate) struct MmuState {
    /// Per pool page.
    pub sp: Vec<SpState>,
    /// KVM's `mmu_page_hash`: gfn → the valid shadow pages shadowing it (one per role). A gfn
    /// is write-tracked exactly when it has an entry here.
    pub page_hash: GfnMap<SmallVec<[SpIdx; 2]>>,
    /// The reverse map: gfn → the leaf SPTEs that map it (KVM's rmap, 4 KiB level only).
    pub rmap: GfnMap<SmallVec<[SpteRef; 2]>>,
    /// Free pool pages.
    pub free: Vec<SpIdx>,
    /// KVM's `active_mmu_pages`, oldest first, with lazily-removed stale entries.
    pub active: VecDeque<(SpIdx, u32)>,
}

impl MmuState {
    pub fn new(pool_pages: u32) -> Self {
        MmuState {
            sp: vec![SpState::default(); pool_pages as usize],
            page_hash: GfnMap::default(),
            rmap: GfnMap::default(),
            // Pop from the end: hand out low indices first (deterministic, readable dumps).
            free: (0..pool_pages).rev().map(SpIdx).collect(),
            active: VecDeque::new(),
        }
    }

    pub fn rmap_add(&mut self, gfn: u64, r: SpteRef) {
        self.rmap.entry(gfn).or_default().push(r);
    }

    pub fn rmap_remove(&mut self, gfn: u64, r: SpteRef) {
        if let Some(v) = self.rmap.get_mut(&gfn) {
            if let Some(pos) = v.iter().position(|x| *x == r) {
                v.swap_remove(pos);
            }
            if v.is_empty() {
                self.rmap.remove(&gfn);
            }
        }
    }

    #[cfg(test)]
    pub fn is_tracked(&self, gfn: u64) -> bool {
        self.page_hash.contains_key(&gfn)
    }

    pub fn hash_remove(&mut self, gfn: u64, idx: SpIdx) {
        if let Some(v) = self.page_hash.get_mut(&gfn) {
            v.retain(|x| *x != idx);
            if v.is_empty() {
                self.page_hash.remove(&gfn);
            }
        }
    }

    pub fn remove_parent(&mut self, child: SpIdx, r: SpteRef) {
        let p = &mut self.sp[child.0 as usize].parent_ptes;
        if let Some(pos) = p.iter().position(|x| *x == r) {
            p.swap_remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_packs_round_trip() {
        let r = Role {
            level: 3,
            access: 5,
        };
        assert_eq!(Role::unpack(r.pack()), r);
    }

    #[test]
    fn unsync_child_bitmap_keeps_count() {
        let sp = ShadowPage::new(0);
        sp.init(7, Role::ROOT);
        assert!(!sp.test_and_set_child(3));
        assert!(sp.test_and_set_child(3));
        assert!(!sp.test_and_set_child(511));
        sp.unsync_children.store(2, Ordering::Relaxed);
        assert_eq!(sp.unsync_child_indices().as_slice(), &[3, 511]);
        sp.clear_unsync_child_bit(3);
        sp.clear_unsync_child_bit(3);
        assert_eq!(sp.load_unsync_children(Ordering::Relaxed), 1);
        sp.clear_all_unsync_children();
        assert!(sp.unsync_child_indices().is_empty());
        assert_eq!(sp.gfn(), 7);
    }

    #[test]
    fn rmap_and_hash_bookkeeping() {
        let mut st = MmuState::new(4);
        assert_eq!(st.free.last(), Some(&SpIdx(0)));
        let r = SpteRef {
            sp: SpIdx(1),
            index: 9,
        };
        st.rmap_add(5, r);
        st.rmap_remove(5, r);
        assert!(st.rmap.is_empty());
        st.page_hash.entry(5).or_default().push(SpIdx(2));
        assert!(st.is_tracked(5));
        st.hash_remove(5, SpIdx(2));
        assert!(!st.is_tracked(5));
    }
}
