//! The KVM backends on `/dev/kvm` (rust-vmm's `kvm-ioctls`/`kvm-bindings`).
//!
//! - `native`: the paravirtual guest runs on its own page tables, loaded into CR3 directly, so
//!   the host kernel's in-kernel shadow MMU does the work ([`run_native`]).
//! - `kvm` ([`run_kvm`], [`shadow`]): CR3 always holds a shadow root of `crate::mmu`; guest
//!   page faults reach the MMU through the monitor stubs and the [`MmuHooks`] interface; CR3
//!   loads, INVLPG and flushes are hypercalls; guest RAM sits behind a permuted frame map.
//!
//! Pieces: [`config`] (how to run), [`vm`] (VM, memslots, vCPU creation in long mode),
//! [`vcpu_fd`] (a vCPU's typed ioctls), [`monitor`] (GDT/IDT/TSS and the exception stubs), [`boot`] (guest RAM layout, ELF load, boot page tables, boot-info page),
//! [`exit`] (the exit handler, a plain function), [`ucall`] (the hypercall ABI, validated),
//! [`hooks`] (the MMU interface), [`kick`] (kicks and requests for remote TLB flushes and
//! stops), [`stats`] (KVM's binary statistics), [`vcpu`] (the per-vCPU thread), [`run`] (a
//! whole run with its watchdog), [`native`] and [`shadow`] (the two modes), [`report`] (what
//! a run reports), [`emulate`] (iced-x86 decoding of the stores the MMU wants
//! emulated).
//!
//! # This host
//!
//! Host notes: what this machine's host (`kvm_pvm`, software-virtualised, no EPT, shadow MMU
//! in the host kernel) forced, as measured here. Written once; the other `kvm` modules link
//! here instead of re-explaining. Machine-wide notes: `/work/shared/HOST-NOTES.md`.
//!
//! - **CPL3 guest.** CPL0 guest code is run by the host's instruction emulator, which has no
//!   SSE: rustc's x86-64 code (and `core`) uses SSE, so the guest runs at CPL3 (IOPL=3). Only
//!   the monitor's stubs (integer-only, no stack use where avoidable) run at CPL0, and every
//!   one of their instructions is emulated.
//! - **XCR0.** The host runs the guest with the guest's XCR0 in hardware: without the SSE bit
//!   in XCR0, SSE instructions raise #UD, so the VMM enables XSAVE and sets XCR0 to x87 | SSE
//!   whenever the CPU has XSAVE (`vm`).
//! - **Slot 255 direct map.** CPL3 cannot reach the upper half: the direct map moved to PML4
//!   slot 255 (the top of the lower half, `layout::DIRECT_MAP_BASE`); every guest mapping
//!   needs U.
//! - **#GP on `out`.** A CPL3 `out` raises #GP despite IOPL=3; `int n` other than `int3` raises
//!   #UD. Hypercalls therefore go through an MMIO window (one exit, [`HypercallPath::Mmio`],
//!   the default on such a host, detected by `/sys/module/kvm_pvm`) or, as port I/O, through
//!   the #GP the monitor reflects and the VMM emulates ([`vcpu::refused_out`]); `native`
//!   privileged MMU instructions go through the monitor's `int3` gate
//!   (`monitor::NATIVE_GATE_VECTOR`).
//! - **Emulated stores count as PTE writes.** Every instruction the host emulates that stores
//!   to memory counts in its `mmu_pte_write` while shadow pages exist; each `int3` gate entry
//!   adds one (the exception frame), which is why the native gate touches no stack. Read
//!   `native`'s `mmu_pte_write` net of the workload's CR3 loads + INVLPGs + flushes.
//! - **No coherence with userspace PTE writes.** The host does not see guest page-table
//!   entries rewritten by the VMM from userspace: INVLPG, a full flush, a CR3 switch and an
//!   MMU context reset all keep the old translation; only deleting and re-adding the memslot
//!   (~100 us) does (`examples/host_coherence.rs`). It does see not-present -> present changes
//!   and added permissions, which its fault path re-walks. The `kvm` backend writes shadow
//!   PTEs from the VMM, so on this host every SPTE change that takes something away is logged
//!   by the MMU (`mmu::coherence`) and, when the MMU asks for a TLB flush (KVM's algorithm
//!   follows every such change with one), *replayed in guest context*: the vCPU is sent (an
//!   injected reserved vector) into a monitor routine that re-stores those SPTEs through the
//!   pool's mapping in the monitor (`monitor::POOL_VA`) and reloads CR3, the way a PVM guest
//!   keeps its host coherent: the host traps or emulates the stores and zaps its own shadows
//!   (`kvm_mmu_track_write`). See [`shadow`]. The memslot cycle with every vCPU parked, the
//!   first design, remains as [`HostCoherence::CycleSlot`]. `tests/kvm_shadow.rs` shows the
//!   self-checks failing with neither, and with the replay's CR3 reload but without its
//!   stores.
//! - **Whole-page replays.** pt-churn, 200 iterations, 65 changed SPTEs a flush, mostly in one
//!   pool page: with [`RunConfig::replay_page_zap_min`] 1, 2, 4, 8 the replays took 33, 29,
//!   28, 29 ms in all; entry by entry (`usize::MAX`), 127 ms (about 4.5 us a store). A
//!   whole-page store costs the host a rebuild of that page's shadow, which is cheap next to a
//!   trapped store per entry once a page has a few: hence [`DEFAULT_REPLAY_PAGE_ZAP_MIN`].
//! - **Exit costs** (release build, `shadowlab-vmm --backend kvm`): a replay round costs
//!   ~50 us (an injected event, the emulated routine, one exit), a memslot cycle ~80-300 us
//!   plus every host shadow page rebuilt; but a guest #PF round trip through the monitor costs
//!   ~50 us too (the exit floor: every CPL0 instruction is emulated), and fault-heavy
//!   workloads are bound by that, not by the flushes.

pub mod boot;
pub mod config;
pub mod elf;
pub mod emulate;
pub mod error;
pub mod exit;
pub mod guest_image;
pub mod hooks;
pub mod hostmem;
pub mod kick;
pub mod layout;
pub mod memslot;
pub mod monitor;
pub mod native;
pub mod report;
pub mod run;
pub mod shadow;
pub mod stats;
pub mod ucall;
pub mod vcpu;
pub mod vcpu_fd;
pub mod vm;

pub use boot::GuestParams;
pub use config::{
    FaultInjection, HostCoherence, HypercallPath, RunConfig, DEFAULT_REPLAY_PAGE_ZAP_MIN,
};
pub use error::KvmError;
pub use hooks::{GuestContext, HookError, MmuHooks, NativeMmu, PfAction};
pub use kick::{make_all_cpus_request, new_kicks, VcpuKick, REQ_STOP, REQ_TLB_FLUSH};
pub use native::{run_native, run_native_reports, run_native_with};
pub use report::{FailureKind, GuestFailure, HostCoherenceStats, RunResult, VcpuReport};
pub use shadow::{run_kvm, run_kvm_reports};
pub use shadowlab_abi::program;

/// Why `/dev/kvm` cannot be used here, or `None` if it can (opened and API version 12).
pub fn kvm_unavailable_reason() -> Option<String> {
    kvm_unavailable_reason_at("/dev/kvm")
}

/// [`kvm_unavailable_reason`] for a KVM device node at `path`.
pub fn kvm_unavailable_reason_at(path: &str) -> Option<String> {
    let cpath = match std::ffi::CString::new(path) {
        Ok(c) => c,
        Err(_) => return Some(format!("bad device path {path:?}")),
    };
    match kvm_ioctls::Kvm::new_with_path(&cpath) {
        Err(e) => Some(format!("opening {path}: {e}")),
        Ok(k) if k.get_api_version() != 12 => {
            Some(format!("KVM API version {}", k.get_api_version()))
        }
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_device_has_a_reason() {
        let r = super::kvm_unavailable_reason_at("/nonexistent/kvm").expect("unavailable");
        assert!(r.contains("/nonexistent/kvm"), "{r}");
        assert!(
            super::kvm_unavailable_reason_at("/dev/null").is_some(),
            "not a KVM device"
        );
    }
}
