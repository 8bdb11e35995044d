//! The shadow MMU: KVM's shadow paging (arch/x86/kvm/mmu/mmu.c and paging_tmpl.h) in the VMM,
//! generic over the build's [`SyncPolicy`]. Names follow mmu.c; each function's doc comment
//! names the KVM function it mirrors and what differs.
//!
//! # API (what the backends call)
//!
//! ```text
//! let mem  = Arc::new(GuestMemory::new(MemConfig { .. })?);
//! let mmu  = Mmu::<BuildPolicy>::new(mem.clone(), nr_vcpus)?;
//! mmu.link_monitor(pml4e);                       // kvm: slot 511 of every shadow root
//! mmu.set_kicker(|vcpu| ..);                      // kvm: force a vCPU out of KVM_RUN
//! mmu.enable_host_coherence_log();                // kvm: log SPTE changes the host can't see
//! mmu.take_host_coherence_log() -> Vec<u64>       //   their pool addresses, at a TLB flush
//! let mut v = mmu.vcpu(id)?;                      // VcpuMmu, owned by the vCPU thread
//!
//! mmu.kvm_mmu_new_pgd(&mut v, cr3)?;              // guest CR3 load: switch root + sync roots
//! v.root_hpa()                                    // -> the machine-physical CR3 to run on
//! mmu.kvm_mmu_flush_tlb_guest(&v);               // guest TLB flush: kvm_mmu_sync_roots
//! mmu.kvm_mmu_invlpg(&v, gva);                    // guest INVLPG
//! mmu.page_fault(&mut v, cr2, Access::from_pfec(error_code))?   // a #PF on the shadow tables
//!     -> Fixed | Retry | GuestFault(f) (inject) | Emulate { gpa } (decode + emulate_write)
//! mmu.emulate_write(&v, gpa, &bytes)?;            // the emulated store to a guest page table
//! mmu.emulate_rmw_u64(&v, gpa, |old| new)?;       // an emulated locked RMW (8 bytes)
//!
//! // Around running guest code (KVM's vcpu->mode / requests):
//! let req = mmu.vcpu_enter_guest(id);             // nonzero: handle, then retry
//!   KVM_REQ_TLB_FLUSH  -> flush the backend's TLB
//!   KVM_REQ_MMU_RELOAD -> mmu.kvm_mmu_reload(&mut v)?
//! mmu.vcpu_exit_guest(id);
//!
//! mmu.stats() -> MmuStats (serde)                 // counters, lock acquisitions and wait
//! mmu.kvm_mmu_zap_all(); mmu.kvm_mmu_zap_gfn(gfn); mmu.kvm_mmu_zap_page(sp);
//! mmu.kvm_mmu_unload(&mut v);                     // vCPU teardown
//! guest_translate(&mem, cr3, gva) / mmu.shadow_translate(&v, gva)  // the oracle's two walks,
//! check_translation(gva, &guest, &shadow) / mmu.audit()            // and its checks
//! ```
//!
//! Backend obligations: call `vcpu_exit_guest` as soon as the vCPU stops running guest code
//! (right after `KVM_RUN` returns), before any other MMU call: remote TLB flushes are issued
//! under the MMU write lock and wait for vCPUs in guest mode to leave it, so a vCPU that took
//! the lock while still marked in guest mode would deadlock. Handle the requests returned by
//! `vcpu_enter_guest` before running. On kvm, install a kicker that forces `KVM_RUN` to
//! return (a signal with `immediate_exit`), or flushes wait for the next natural exit.
//!
//! # The algorithm
//!
//! - A guest #PF on the shadow tables ([`Mmu::page_fault`], `FNAME(page_fault)`) walks the guest
//!   tables ([`walk_addr`], setting guest A/D), then under the write lock links shadow pages
//!   level by level (`kvm_mmu_get_page`, `link_shadow_page`) and sets the leaf
//!   (`mmu_set_spte`), then fills the leaf's not-present neighbours (an aligned group of
//!   [`PTE_PREFETCH_NUM`]) from the guest table where their guest PTEs are valid and Accessed
//!   (`FNAME(pte_prefetch)`). Every gfn shadowed as a page table is write-protected
//!   (`account_shadowed` → `rmap_write_protect`, with a remote TLB flush).
//! - A write fault on a write-protected *leaf* guest table unsyncs it
//!   (`mmu_try_to_unsync_pages`): `sp.unsync = true`, parents' `unsync_children`, then
//!   `fence(Release)` (smp_wmb), then SPTE.W = 1. The flags and the fence are the policies
//!   crate's `publish_unsync`, which the loom model runs too. Any other write to a shadowed gfn is emulated
//!   ([`Mmu::emulate_write`] → `kvm_mmu_track_write`): the affected SPTE is zapped; misaligned
//!   or repeated (write-flooding) writes zap the page.
//! - On the guest's CR3 load / TLB flush, [`Mmu::kvm_mmu_sync_roots`] asks
//!   `P::is_unsync_root(&HostMemory, root)` **without the lock**; only if it says yes does it
//!   take the write lock, re-check with `unsync_under_lock`, and run `mmu_sync_children`:
//!   write-protect the unsync pages' gfns (remote flush), clear `unsync`, re-read every guest
//!   PTE (`kvm_sync_page` / `FNAME(sync_spte)`). INVLPG syncs the one SPTE
//!   (`FNAME(invlpg)`).
//! - Roots are cached per vCPU ([`KVM_MMU_NUM_PREV_ROOTS`]); switching to a cached root takes
//!   no lock (`fast_pgd_switch`).
//! - Pages are zapped in two steps (`kvm_mmu_prepare_zap_page`, then
//!   `kvm_mmu_commit_zap_page` after a waiting remote TLB flush); a zapped root still in use is
//!   marked invalid and its users are asked to reload. When the pool runs low the oldest pages
//!   are recycled (`make_mmu_pages_available`, `mmu_recycled`); a pool too small for the pinned
//!   roots is an error, never a panic.
//!
//! # Locking
//!
//! See [`lock`]: writes under the write lock; read lock for the INVLPG pre-check and for
//! inspection; no lock for `is_unsync_root` and the cached-root switch.
//!
//! # Differs from KVM
//!
//! Every deliberate simplification, in one place (function-level details stay in each
//! function's own "Differs from KVM" note). None of them touches the unsync protocol or the
//! order of write-protect, flush and re-read.
//!
//! | here | KVM | why |
//! |---|---|---|
//! | 4 KiB pages only: PS above level 1 is a reserved-bit guest #PF | 2 MiB / 1 GiB guest and host pages | the protocol under study is about 4 KiB leaf tables; the workloads map 4 KiB pages |
//! | a page's role is (level, access) | also direct, quadrant, cr0_wp, smep/smap_andnot_wp, efer_nx, guest_mode, ad_disabled, passthrough, … | one paging mode: 4-level long mode, CR0.WP = 1, EFER.NXE = 1, no SMEP/SMAP, no nested guest |
//! | a guest TLB flush syncs the current root only | `kvm_vcpu_flush_tlb_guest` also syncs the cached roots (`kvm_mmu_sync_prev_roots`) | the guest has no PCID or global pages: a cached root is only used after a CR3 load, and that load syncs it ([`Mmu::kvm_mmu_new_pgd`]) |
//! | the top-level gpte re-check is the PML4E | PAE roots' PDPTEs too | no 32-bit or PAE guests |
//! | upper-level gfns are found through the page hash | page-track write tracking (`account_shadowed`) | the same question asked of one structure; no other write-tracking users |
//! | no separate `mmu_unsync_pages_lock` | a spinlock for concurrent unsyncs under the read lock | every unsync runs under the write lock |
//! | INVLPG pre-checks under the read lock | always takes the write lock | the common INVLPG of a synced mapping stays cheap; the sync itself is the same |
//! | no MMIO SPTEs, async page faults, MMU notifiers or page aging | all present | guest RAM is pinned, owned by the VMM, and never swapped or moved |
//! | prefetch loads each neighbour gpte when needed; a clean gPTE keeps `SPTE_MMU_WRITABLE` with W withheld | reads the group in `gpte_changed`; drops `ACC_WRITE` | equivalent under the lock; the next write faults either way |
//! | shadow tables in a pool outside guest RAM, guest frames permuted | host pages from the kernel | a guest that bypasses the shadow MMU reads wrong data and tests notice |
//! | remote flush = request + kicker, waiting for vCPUs in guest mode | request + IPI, waiting for the acknowledgement | the same guarantee: no vCPU runs on the old translation once the call returns |

mod audit;
mod coherence;
mod fault;
pub mod lock;
mod page;
mod prefetch;
mod roots;
mod shadow_walk;
pub mod spte;
mod stats;
mod sync;
mod unsync;
mod vcpu;
mod walk;
mod write;
mod zap;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use shadowlab_policies::SyncPolicy;

use crate::mem::{GuestMemory, MemError};

pub use audit::check_translation;
pub use fault::FaultOutcome;
pub use lock::LockStats;
pub use page::{GfnHasher, Role, ShadowPage, SpIdx, SpteRef};
pub use prefetch::PTE_PREFETCH_NUM;
pub use shadow_walk::{shadow_walk, ShadowMiss, ShadowTranslation};
pub use spte::Access;
pub use stats::{Counter, MmuStats};
pub use vcpu::{
    CachedRoot, VcpuMmu, KVM_MMU_NUM_PREV_ROOTS, KVM_REQ_MMU_RELOAD, KVM_REQ_TLB_FLUSH,
};
pub use walk::{guest_translate, walk_addr, GuestFault, GuestTranslation, GuestWalker, WalkFail};

use lock::MmuLock;
use page::MmuState;
use stats::CounterBlock;
use vcpu::VcpuShared;

/// Pages the fault path may need at once (one per non-root level); the pool is refilled to
/// this before a fault (KVM's `KVM_MIN_FREE_MMU_PAGES`).
pub const MIN_FREE_PAGES: usize = 3;

/// A failure of the VMM side of an MMU operation (guest-visible faults are
/// [`FaultOutcome::GuestFault`], not errors).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmuError {
    /// The pool is too small for the roots pinned by the vCPUs.
    #[error("shadow pool exhausted: {pool} pages, {free} free after recycling; every other page is a root in use (enlarge the pool or reduce vCPUs)")]
    PoolExhausted {
        /// Pool size.
        pool: u64,
        /// Free pages after recycling.
        free: usize,
    },
    /// The pool cannot hold even one root per vCPU plus a fault's worth of pages.
    #[error("shadow pool of {pool} pages is too small for {vcpus} vCPUs (need at least {min})")]
    PoolTooSmall {
        /// Pool size.
        pool: u64,
        /// vCPUs.
        vcpus: usize,
        /// Minimum.
        min: u64,
    },
    /// The guest loaded a CR3 that does not point at guest RAM.
    #[error("guest CR3 {0:#x} does not point at guest RAM")]
    BadCr3(u64),
    /// An MMU call for a vCPU that has not loaded a CR3 yet.
    #[error("vCPU {0} has no root: load CR3 first")]
    NoRoot(usize),
    /// A vCPU index out of range.
    #[error("vCPU index {vcpu} out of range (the MMU has {nr} vCPUs)")]
    BadVcpu {
        /// The index.
        vcpu: usize,
        /// vCPUs.
        nr: usize,
    },
    /// An emulated write the MMU cannot apply.
    #[error("emulated write of {len} bytes at guest-physical {gpa:#x}: {why}")]
    BadEmulatedWrite {
        /// Target.
        gpa: u64,
        /// Length.
        len: usize,
        /// Why.
        why: &'static str,
    },
    /// A guest-memory access failed.
    #[error("guest memory: {0}")]
    Mem(#[from] MemError),
}

/// The shadow MMU of one VM, shared by its vCPU threads (`Arc<Mmu<P>>` or a scoped borrow).
pub struct Mmu<P: SyncPolicy> {
    mem: Arc<GuestMemory>,
    pages: Box<[ShadowPage]>,
    state: MmuLock<MmuState>,
    vcpus: Box<[VcpuShared]>,
    global: CounterBlock,
    monitor_pml4e: AtomicU64,
    kicker: OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
    host_log: OnceLock<coherence::CoherenceLog>,
    _policy: PhantomData<P>,
}

impl<P: SyncPolicy> std::fmt::Debug for Mmu<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmu")
            .field("policy", &P::NAME)
            .field("pool_pages", &self.pages.len())
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl<P: SyncPolicy> Mmu<P> {
    /// An MMU over `mem`'s shadow pool for `nr_vcpus` vCPUs.
    pub fn new(mem: Arc<GuestMemory>, nr_vcpus: usize) -> Result<Self, MmuError> {
        let pool = mem.pool_frames();
        // Each vCPU pins its root plus up to KVM_MMU_NUM_PREV_ROOTS cached ones, and a fault
        // needs MIN_FREE_PAGES on top.
        let min = (nr_vcpus * (1 + KVM_MMU_NUM_PREV_ROOTS) + MIN_FREE_PAGES) as u64;
        if nr_vcpus == 0 || pool < min || pool > u32::MAX as u64 {
            return Err(MmuError::PoolTooSmall {
                pool,
                vcpus: nr_vcpus,
                min,
            });
        }
        let pages = (0..pool as u32)
            .map(|i| ShadowPage::new(mem.pool_page_mpa(i)))
            .collect();
        Ok(Mmu {
            state: MmuLock::new(MmuState::new(pool as u32)),
            pages,
            vcpus: (0..nr_vcpus).map(|_| VcpuShared::default()).collect(),
            global: CounterBlock::default(),
            monitor_pml4e: AtomicU64::new(0),
            kicker: OnceLock::new(),
            host_log: OnceLock::new(),
            mem,
            _policy: PhantomData,
        })
    }

    /// The guest memory this MMU shadows.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// The MMU context for vCPU `id`, to be owned by that vCPU's thread. Call once per vCPU.
    pub fn vcpu(&self, id: usize) -> Result<VcpuMmu, MmuError> {
        if id >= self.vcpus.len() {
            return Err(MmuError::BadVcpu {
                vcpu: id,
                nr: self.vcpus.len(),
            });
        }
        Ok(VcpuMmu::new(id))
    }

    /// Installs the function that forces vCPU `id` out of guest mode (on kvm: a signal or
    /// `immediate_exit`), called by remote TLB flushes that must wait for it. Without one,
    /// waiters just spin until the vCPU leaves guest mode by itself (enough for sim, whose
    /// vCPUs leave guest mode after every access). Only the first call has an effect.
    pub fn set_kicker(&self, kick: impl Fn(usize) + Send + Sync + 'static) {
        let _ = self.kicker.set(Box::new(kick));
    }

    /// Marks vCPU `id` in guest mode, unless requests are pending: then returns them (taken),
    /// and the backend must handle them ([`KVM_REQ_TLB_FLUSH`]: flush its TLB;
    /// [`KVM_REQ_MMU_RELOAD`]: [`Mmu::kvm_mmu_reload`]) and call again. Returns 0 when entered.
    ///
    /// An `id` out of range (no [`VcpuMmu`] of this MMU carries one) is ignored here and in the
    /// two functions below rather than panicking.
    #[inline]
    pub fn vcpu_enter_guest(&self, id: usize) -> u32 {
        self.vcpus.get(id).map_or(0, VcpuShared::enter_guest)
    }

    /// Marks vCPU `id` outside guest mode (a VM exit).
    #[inline]
    pub fn vcpu_exit_guest(&self, id: usize) {
        if let Some(v) = self.vcpus.get(id) {
            v.exit_guest()
        }
    }

    /// Takes vCPU `id`'s pending requests without entering guest mode.
    #[inline]
    pub fn vcpu_take_requests(&self, id: usize) -> u32 {
        self.vcpus.get(id).map_or(0, VcpuShared::take_requests)
    }

    /// All counters, summed, with the lock's.
    pub fn stats(&self) -> MmuStats {
        stats::snapshot(
            self.vcpus
                .iter()
                .map(|v| &v.counters)
                .chain(std::iter::once(&self.global)),
            self.state.stats(),
        )
    }

    /// The [`ShadowPage`] for pool page `idx`.
    pub fn shadow_page(&self, idx: SpIdx) -> Option<&ShadowPage> {
        self.pages.get(idx.0 as usize)
    }

    /// The current root's [`ShadowPage`] of a vCPU (for `is_unsync_root` benchmarks).
    pub fn root_page(&self, v: &VcpuMmu) -> Option<&ShadowPage> {
        v.root.map(|r| self.sp(r))
    }

    // ----- internal helpers -----

    #[inline]
    fn sp(&self, idx: SpIdx) -> &ShadowPage {
        &self.pages[idx.0 as usize]
    }

    #[inline]
    fn counters(&self, vcpu: usize) -> &CounterBlock {
        self.vcpus
            .get(vcpu)
            .map(|v| &v.counters)
            .unwrap_or(&self.global)
    }

    #[inline]
    fn spte_mpa(&self, r: SpteRef) -> u64 {
        self.sp(r.sp).spt + r.index as u64 * 8
    }

    /// Loads an SPTE (under the lock; the MMU is its only writer, walkers only OR in A/D).
    #[inline]
    fn load_spte(&self, r: SpteRef) -> u64 {
        // The address is a pool page and an index < 512: always in bounds; 0 is "not present"
        // should that ever not hold.
        self.mem
            .region()
            .load_u64(self.spte_mpa(r), Ordering::Relaxed)
            .unwrap_or(0)
    }

    /// Stores an SPTE. `Release` so a walker that follows a new link sees the zeroed table
    /// (`mmu_spte_set`; on x86 a plain store). A change the host cannot see is logged
    /// ([`coherence`]).
    ///
    /// The change is logged after the store: a vCPU replaying the log concurrently must not
    /// take the entry while the SPTE still holds its old value (the host would re-cache that,
    /// and the entry would be gone). Logged after, the entry is replayed either by a replay
    /// that sees the new value or by the next one.
    #[inline]
    fn store_spte(&self, r: SpteRef, v: u64) {
        let old = if self.host_log.get().is_some() {
            self.load_spte(r)
        } else {
            0
        };
        let _ = self
            .mem
            .region()
            .store_u64(self.spte_mpa(r), v, Ordering::Release);
        self.log_spte_change(r, old, v);
    }

    /// Atomically clears an SPTE, returning the old value (A/D bits set by a concurrent walker
    /// are not lost: KVM's `mmu_spte_clear_track_bits`). A present one is logged for the host
    /// ([`coherence`]).
    #[inline]
    fn clear_spte(&self, r: SpteRef) -> u64 {
        let old = self
            .mem
            .region()
            .swap_u64(self.spte_mpa(r), 0, Ordering::AcqRel)
            .unwrap_or(0);
        self.log_spte_change(r, old, 0);
        old
    }

    /// The shadow page a non-leaf SPTE points at.
    #[inline]
    fn sp_of_spte(&self, spte: u64) -> Option<SpIdx> {
        self.mem.pool_index(spte & spte::SPTE_ADDR).map(SpIdx)
    }

    /// The guest frame a leaf SPTE maps.
    #[inline]
    fn leaf_gfn(&self, spte: u64) -> Option<u64> {
        self.mem.mfn_to_gfn((spte & spte::SPTE_ADDR) >> 12)
    }

    /// `kvm_make_all_cpus_request`.
    fn make_all_cpus_request(&self, req: u32) {
        for v in self.vcpus.iter() {
            v.make_request(req);
        }
    }

    /// `kvm_flush_remote_tlbs`: asks every vCPU to flush its TLB and waits until each one
    /// that was in guest mode has left it, so no stale translation survives the call.
    fn kvm_flush_remote_tlbs(&self, c: &CounterBlock) {
        c.inc(Counter::remote_tlb_flushes);
        let mut waits: smallvec::SmallVec<[(usize, u64); 8]> = smallvec::SmallVec::new();
        for (i, v) in self.vcpus.iter().enumerate() {
            if let Some(exits) = v.make_request(KVM_REQ_TLB_FLUSH) {
                waits.push((i, exits));
            }
        }
        for (i, exits) in waits {
            if let Some(kick) = self.kicker.get() {
                kick(i);
            }
            let mut spins = 0u32;
            while !self.vcpus[i].left_guest_since(exits) {
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil;
