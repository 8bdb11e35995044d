//! The guest's implementation of the workloads' `Cpu` trait: real loads, stores and `lock xadd`
//! through the current page tables, and the MMU operations as real instructions (`native`) or
//! hypercalls (`kvm`).

use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use shadowlab_abi::{native_op, status, BootInfo, GuestMode, UcallCmd};
use shadowlab_workloads::Cpu;

/// One vCPU of the guest.
pub struct GuestCpu {
    id: usize,
    nr_vcpus: usize,
    native: bool,
    boot_root: u64,
    shared: u64,
    free: Range<u64>,
}

impl GuestCpu {
    /// The vCPU `id` as the boot-info page describes it.
    pub fn new(id: usize, info: &BootInfo) -> Self {
        let v = &info.vcpus[id];
        Self {
            id,
            nr_vcpus: info.nr_vcpus as usize,
            native: info.mode == GuestMode::Native as u64,
            boot_root: v.boot_root,
            shared: info.shared_gpa,
            free: v.free_start..v.free_end,
        }
    }

    fn atomic(gva: u64) -> &'static AtomicU64 {
        crate::guest_assert!(
            gva.is_multiple_of(8),
            "misaligned 8-byte access at {gva:#x}"
        );
        // SAFETY: the workload owns its address space; an unmapped gva faults into the monitor
        // (a reported guest #PF), it never corrupts the runtime. AtomicU64 has the alignment
        // checked above.
        unsafe { &*(gva as *const AtomicU64) }
    }

    fn mmu_call(cmd: UcallCmd, arg: u64) {
        let st = crate::ucall::mmu(cmd, arg);
        crate::guest_assert!(
            st == status::OK,
            "MMU hypercall {cmd:?}({arg:#x}) failed: status {st}"
        );
    }
}

impl Cpu for GuestCpu {
    fn id(&self) -> usize {
        self.id
    }

    fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    fn free_frames(&self) -> Range<u64> {
        self.free.clone()
    }

    fn boot_root(&self) -> u64 {
        self.boot_root
    }

    fn shared_page(&self) -> u64 {
        self.shared
    }

    fn read_u64(&mut self, gva: u64) -> u64 {
        Self::atomic(gva).load(Ordering::Acquire)
    }

    fn write_u64(&mut self, gva: u64, value: u64) {
        Self::atomic(gva).store(value, Ordering::Release)
    }

    fn fetch_add_u64(&mut self, gva: u64, value: u64) -> u64 {
        // `lock xadd`.
        Self::atomic(gva).fetch_add(value, Ordering::SeqCst)
    }

    fn fetch(&mut self, gva: u64) {
        // SAFETY: `Cpu::fetch`'s contract: the workload stored a one-byte `ret` at `gva`, so
        // the call returns at once having pushed and popped only its own return address; the
        // asm is not `nostack`, so RSP is aligned for a call and the compiler keeps nothing in
        // the red zone across it, and `clobber_abi` covers what a call may clobber. A page
        // that is not mapped executable (or not user) faults into the monitor (a reported
        // guest #PF) before anything runs.
        unsafe { asm!("call {f}", f = in(reg) gva, clobber_abi("sysv64")) }
    }

    fn pause(&mut self) {
        core::hint::spin_loop()
    }

    fn load_cr3(&mut self, root: u64) {
        if self.native {
            // SAFETY: the workload hands us the root of page tables it built, which map the
            // direct map (our code, data and stack) like the boot root; the monitor slot is
            // the VMM's and stays linked by convention. A bad root faults into the monitor.
            // We run at CPL3: the monitor's native-op gate does the `mov cr3, rdi` (and links
            // the monitor into the root first); it clobbers RAX and RDX.
            unsafe {
                asm!(
                    "int3",
                    inout("eax") native_op::LOAD_CR3 => _,
                    in("rdi") root,
                    out("rdx") _,
                    options(nostack)
                )
            };
        } else {
            Self::mmu_call(UcallCmd::LoadCr3, root);
        }
    }

    fn invlpg(&mut self, gva: u64) {
        if self.native {
            // SAFETY: the monitor's gate does `invlpg [rdi]`, which only drops a TLB entry.
            unsafe {
                asm!("int3", inout("eax") native_op::INVLPG => _, in("rdi") gva, out("rdx") _, options(nostack))
            };
        } else {
            Self::mmu_call(UcallCmd::Invlpg, gva);
        }
    }

    fn flush_tlb(&mut self) {
        if self.native {
            // SAFETY: the monitor's gate reloads CR3 with its own value, which flushes
            // non-global TLB entries only.
            unsafe {
                asm!("int3", inout("eax") native_op::FLUSH_TLB => _, out("rdx") _, options(nostack))
            };
        } else {
            Self::mmu_call(UcallCmd::FlushTlb, 0);
        }
    }

    fn hypercall_nop(&mut self) {
        crate::ucall::nop()
    }

    fn timestamp(&mut self) -> u64 {
        // SAFETY: rdtsc reads the time-stamp counter; CR4.TSD is clear.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}
