//! The MMU's counter snapshot, its lock's counters, and the sim backend's per-vCPU counters.
//! The MMU fills these (`framework/src/mmu/stats.rs`: one `Counter` per field of [`MmuStats`]).

use serde::{Deserialize, Serialize};

/// A snapshot of every MMU counter, summed over vCPUs, plus the lock's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmuStats {
    /// Shadow page faults handled (`kvm_mmu_page_fault`).
    pub faults: u64,
    /// Faults reflected to the guest (its own tables deny the access).
    pub guest_faults: u64,
    /// Faults that found a stale walk or an invalid root and asked for a retry.
    pub fault_retries: u64,
    /// Write faults on write-protected guest page tables that need emulation.
    pub emulations: u64,
    /// Emulated writes to shadowed guest page tables (`kvm_mmu_track_write`).
    pub emulated_writes: u64,
    /// SPTEs zapped by emulated writes.
    pub pte_writes_zapped: u64,
    /// Shadow pages marked unsync (`kvm_unsync_page`).
    pub unsyncs: u64,
    /// Calls of `kvm_mmu_sync_roots`.
    pub sync_roots: u64,
    /// Calls that `is_unsync_root` let return without the lock.
    pub sync_roots_lockless_skips: u64,
    /// Runs of `mmu_sync_children` under the lock.
    pub syncs: u64,
    /// Shadow pages re-read by `kvm_sync_page`.
    pub pages_synced: u64,
    /// Single SPTEs re-read by INVLPG.
    pub sptes_synced: u64,
    /// INVLPGs (`kvm_mmu_invlpg`).
    pub invlpgs: u64,
    /// CR3 loads (`kvm_mmu_new_pgd`).
    pub cr3_loads: u64,
    /// CR3 loads served from the previous-roots cache without the lock.
    pub fast_cr3_switches: u64,
    /// Roots looked up or created (`mmu_alloc_root`).
    pub roots_allocated: u64,
    /// Shadow pages allocated (`kvm_mmu_alloc_shadow_page`).
    pub pages_created: u64,
    /// Shadow pages zapped (`kvm_mmu_prepare_zap_page`).
    pub pages_zapped: u64,
    /// Pages zapped for write flooding or misaligned writes (`mmu_flooded`).
    pub flooded: u64,
    /// Pages zapped to refill the pool (`mmu_recycled`).
    pub recycled: u64,
    /// Remote TLB flush requests (`kvm_flush_remote_tlbs`).
    pub remote_tlb_flushes: u64,
    /// gfns write-protected because they became shadowed or were synced.
    pub write_protects: u64,
    /// Leaf SPTEs set from neighbouring guest PTEs on a fault (`FNAME(pte_prefetch)`).
    pub prefetched: u64,
    /// The MMU lock's counters.
    pub lock: LockStats,
}

/// A snapshot of the MMU lock's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStats {
    /// Read acquisitions.
    pub read_acquisitions: u64,
    /// Write acquisitions.
    pub write_acquisitions: u64,
    /// Read acquisitions that had to wait.
    pub read_contended: u64,
    /// Write acquisitions that had to wait.
    pub write_contended: u64,
    /// Total nanoseconds spent waiting for read.
    pub read_wait_ns: u64,
    /// Total nanoseconds spent waiting for write.
    pub write_wait_ns: u64,
}

/// One simulated vCPU's counters (`sim` backend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCpuStats {
    /// Guest memory accesses.
    pub accesses: u64,
    /// Accesses served by the software TLB.
    pub tlb_hits: u64,
    /// Shadow-table walks (TLB misses).
    pub walks: u64,
    /// Walks that failed and entered the MMU's fault handler.
    pub shadow_faults: u64,
    /// Stores emulated by the MMU (write-protected guest page tables).
    pub emulated: u64,
    /// Full TLB flushes (CR3 loads, flushes, flush requests).
    pub tlb_flushes: u64,
    /// Flush requests from other vCPUs that this vCPU honoured.
    pub remote_flushes_seen: u64,
    /// Root reloads after a zap.
    pub reloads: u64,
    /// No-op hypercalls.
    pub hypercalls: u64,
}
