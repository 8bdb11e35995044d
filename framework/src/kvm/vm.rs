//! The VM: /dev/kvm, the VM fd, guest RAM and the monitor as memslots, and vCPU creation with
//! long mode set up directly through the special registers.

use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_segment, kvm_userspace_memory_region, kvm_xcrs, CpuId,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use shadowlab_abi::layout::{direct_map, MONITOR_BASE};
use shadowlab_abi::{VcpuBoot, BOOT_INFO_GPA};

use super::error::KvmError;
use super::hostmem::{new_region, RegionExt};
use super::layout::{MAX_RAM, MIN_RAM, MONITOR_GPA, MONITOR_SLOT, RAM_SLOT, SHADOW_POOL_SLOT};
use super::memslot::MemslotError;
use super::monitor::{
    self, CODE_SEL, DATA_SEL, GDT_LIMIT, GDT_OFF, IDT_OFF, MONITOR_SIZE, TSS_OFF, TSS_SEL0,
    TSS_STRIDE, USER_CODE_SEL, USER_DATA_SEL,
};
use super::vcpu_fd::Vcpu;
use crate::mem::{GuestMemory, MemRegion};
use std::sync::Arc;
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;

/// XCR0: x87 and SSE state, set whenever the CPU has XSAVE ([host notes](super#this-host):
/// without the SSE bit the guest's SSE instructions raise #UD).
const XCR0_X87_SSE: u64 = 0x3;
/// A VM with guest RAM and the monitor mapped.
pub struct Vm {
    // Field order is drop order: the VM fd (and with it the memslots) goes before the memory.
    vm_fd: VmFd,
    kvm: Kvm,
    cpuid: CpuId,
    ram: Ram,
    monitor: MemRegion,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("ram", &self.ram)
            .field("monitor", &self.monitor)
            .finish()
    }
}

fn mmap(size: u64) -> Result<MemRegion, KvmError> {
    Ok(new_region(size)?)
}

/// Guest memory of a VM.
enum Ram {
    /// `native`: RAM at guest-physical 0, gfn == backing frame.
    Own(MemRegion),
    /// `kvm`: the shadow MMU's [`GuestMemory`] (RAM backing frames, then the shadow pool) at
    /// machine-physical (= KVM guest-physical) 0.
    Shadowed(Arc<GuestMemory>),
}

impl std::fmt::Debug for Ram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ram::Own(r) => write!(f, "Own({r:?})"),
            Ram::Shadowed(m) => write!(
                f,
                "Shadowed({} RAM frames, {} pool pages)",
                m.ram_frames(),
                m.pool_frames()
            ),
        }
    }
}

fn open_kvm(nr_vcpus: usize) -> Result<(Kvm, VmFd, CpuId), KvmError> {
    let kvm = Kvm::new().map_err(KvmError::OpenKvm)?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(KvmError::ApiVersion(api));
    }
    if !kvm.check_extension(Cap::ImmediateExit) {
        return Err(KvmError::MissingCap("KVM_CAP_IMMEDIATE_EXIT"));
    }
    if !kvm.check_extension(Cap::UserMemory) {
        return Err(KvmError::MissingCap("KVM_CAP_USER_MEMORY"));
    }
    let max = kvm.get_max_vcpus();
    if nr_vcpus > max {
        return Err(KvmError::TooManyVcpusForKvm {
            vcpus: nr_vcpus,
            max,
        });
    }
    let vm_fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::GetSupportedCpuid)?;
    Ok((kvm, vm_fd, cpuid))
}

fn check_ram_size(ram_size: u64) -> Result<(), KvmError> {
    if !(MIN_RAM..=MAX_RAM).contains(&ram_size) || ram_size % (2 << 20) != 0 {
        return Err(KvmError::RamSize {
            bytes: ram_size,
            min: MIN_RAM,
            max: MAX_RAM,
        });
    }
    Ok(())
}

impl Vm {
    /// Opens /dev/kvm and creates a VM with `ram_size` bytes of guest RAM for `nr_vcpus` vCPUs
    /// (`native`: gfn == backing frame).
    pub fn new(ram_size: u64, nr_vcpus: usize) -> Result<Self, KvmError> {
        check_ram_size(ram_size)?;
        let (kvm, vm_fd, cpuid) = open_kvm(nr_vcpus)?;
        let monitor = mmap(MONITOR_SIZE)?;
        let vm = Self {
            vm_fd,
            kvm,
            cpuid,
            ram: Ram::Own(mmap(ram_size)?),
            monitor,
        };
        // SAFETY: both regions are fields of `vm`, dropped after its VM fd (field order of
        // `Vm`); `Vm` keeps that order.
        unsafe {
            vm.add_memslot(RAM_SLOT, 0, vm.ram())?;
            vm.add_memslot(MONITOR_SLOT, MONITOR_GPA, &vm.monitor)?;
        }
        monitor::build(&vm.monitor, nr_vcpus)?;
        Ok(vm)
    }

    /// A VM on the shadow MMU's memory (`kvm`): RAM backing frames as memslot [`RAM_SLOT`] and
    /// the shadow pool as memslot [`SHADOW_POOL_SLOT`], both at their machine-physical
    /// addresses, plus the monitor.
    pub fn with_guest_memory(mem: Arc<GuestMemory>, nr_vcpus: usize) -> Result<Self, KvmError> {
        check_ram_size(mem.ram_bytes())?;
        let end = mem.pool_base() + mem.pool_frames() * 4096;
        if end > MONITOR_GPA {
            return Err(KvmError::PoolOverlapsMonitor {
                end,
                monitor: MONITOR_GPA,
            });
        }
        let (kvm, vm_fd, cpuid) = open_kvm(nr_vcpus)?;
        let monitor = mmap(MONITOR_SIZE)?;
        let vm = Self {
            vm_fd,
            kvm,
            cpuid,
            ram: Ram::Shadowed(mem),
            monitor,
        };
        if let Ram::Shadowed(m) = &vm.ram {
            vm.set_pool_slots(m)?;
        }
        // SAFETY: the monitor is a field of `vm`, dropped after its VM fd (field order of
        // `Vm`); `Vm` keeps that order.
        unsafe { vm.add_memslot(MONITOR_SLOT, MONITOR_GPA, &vm.monitor)? };
        monitor::build(&vm.monitor, nr_vcpus)?;
        if let Ram::Shadowed(m) = &vm.ram {
            // The replay routine stores to SPTEs through this mapping (`kvm::shadow`).
            monitor::map_pool(&vm.monitor, m.pool_base(), m.pool_frames() * 4096)?;
        }
        Ok(vm)
    }

    /// Memslots [`RAM_SLOT`] (RAM backing frames) and [`SHADOW_POOL_SLOT`] on `m`, the VM's
    /// own [`GuestMemory`].
    fn set_pool_slots(&self, m: &GuestMemory) -> Result<(), MemslotError> {
        let host = m.region().host_addr();
        // SAFETY: `m` is the VM's `Ram::Shadowed` memory, an `Arc` field of `self` dropped
        // after the VM fd (field order of `Vm`); RAM frames and pool lie inside its region
        // (`GuestMemory`'s layout: RAM frames from 0, the pool at `pool_base`).
        unsafe {
            self.set_slot(RAM_SLOT, 0, m.ram_bytes(), host)?;
            self.set_slot(
                SHADOW_POOL_SLOT,
                m.pool_base(),
                m.pool_frames() * 4096,
                host + m.pool_base(),
            )
        }
    }

    /// Deletes and re-adds the shadow pool's memslot. On a host that shadows the guest's page
    /// tables itself, this is what makes it drop its shadows of the pool pages, so that SPTE
    /// changes the VMM wrote from userspace are seen (see the [host notes](super#this-host)).
    /// No vCPU may be in KVM_RUN meanwhile (the caller parks them).
    pub fn cycle_pool_slot(&self) -> Result<(), MemslotError> {
        let Ram::Shadowed(m) = &self.ram else {
            return Err(MemslotError::NoShadowPool);
        };
        let host = m.region().host_addr() + m.pool_base();
        // SAFETY: as in `set_pool_slots`: the pool lies in the VM's own `GuestMemory`, which
        // outlives the VM fd; size 0 deletes the slot.
        unsafe {
            self.set_slot(SHADOW_POOL_SLOT, m.pool_base(), 0, host)?;
            self.set_slot(
                SHADOW_POOL_SLOT,
                m.pool_base(),
                m.pool_frames() * 4096,
                host,
            )
        }
    }

    /// KVM_SET_USER_MEMORY_REGION: memslot `slot` at `gpa`, `size` bytes backed by host
    /// address `host` (size 0 deletes the slot).
    ///
    /// # Safety
    ///
    /// `host..host + size` must be a live mapping that stays mapped until the slot is deleted
    /// or the VM fd is closed: KVM (and through it the guest) reads and writes it meanwhile.
    unsafe fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: u64,
    ) -> Result<(), MemslotError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller keeps the host range mapped for the slot's life (this function's
        // contract).
        unsafe { self.vm_fd.set_user_memory_region(region) }.map_err(|source| {
            MemslotError::SetUserMemoryRegion {
                slot,
                gpa,
                size,
                source,
            }
        })
    }

    /// Adds a memslot backed by all of `mem`.
    ///
    /// # Safety
    ///
    /// `mem` must outlive the VM fd (in practice: it is a field of `self`, and `Vm`'s field
    /// order drops the VM fd first), as [`Vm::set_slot`] requires of its range.
    unsafe fn add_memslot(&self, slot: u32, gpa: u64, mem: &MemRegion) -> Result<(), MemslotError> {
        // SAFETY: `mem` is a live mapping of `mem.size()` bytes that outlives the VM fd (this
        // function's contract).
        unsafe { self.set_slot(slot, gpa, mem.size(), mem.host_addr()) }
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Guest RAM (`native`), or the whole machine-physical region of the shadow MMU's memory
    /// (`kvm`).
    pub fn ram(&self) -> &MemRegion {
        match &self.ram {
            Ram::Own(r) => r,
            Ram::Shadowed(m) => m.region(),
        }
    }

    /// The monitor.
    pub fn monitor(&self) -> &MemRegion {
        &self.monitor
    }

    /// Creates vCPU `index` and puts it at the guest's entry in 64-bit mode on `cr3`.
    pub fn create_vcpu(
        &self,
        index: usize,
        entry: u64,
        boot: &VcpuBoot,
        cr3: u64,
    ) -> Result<Vcpu, KvmError> {
        let vcpu = Vcpu::create(&self.vm_fd, index)?;
        let mut cpuid = self.cpuid.clone();
        for e in cpuid.as_mut_slice() {
            match e.function {
                // Initial APIC id.
                1 => e.ebx = (e.ebx & 0x00ff_ffff) | ((index as u32 & 0xff) << 24),
                0xb | 0x1f => e.edx = index as u32,
                _ => {}
            }
        }
        vcpu.set_cpuid2(&cpuid)?;

        let mut sregs = vcpu.get_sregs()?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: CODE_SEL,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let _kernel_data = kvm_segment {
            selector: DATA_SEL,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        // The guest runs at CPL3 (see `monitor`): user code and data segments.
        let code = kvm_segment {
            selector: USER_CODE_SEL,
            dpl: 3,
            ..code
        };
        let data = kvm_segment {
            selector: USER_DATA_SEL,
            type_: 0x3,
            db: 1,
            l: 0,
            dpl: 3,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            base: MONITOR_BASE + TSS_OFF + index as u64 * TSS_STRIDE,
            limit: 103,
            selector: TSS_SEL0 + 16 * index as u16,
            type_: 0xb,
            present: 1,
            s: 0,
            ..Default::default()
        };
        sregs.gdt.base = MONITOR_BASE + GDT_OFF;
        sregs.gdt.limit = GDT_LIMIT;
        sregs.idt.base = MONITOR_BASE + IDT_OFF;
        sregs.idt.limit = 16 * 256 - 1;
        // WP: supervisor writes honour read-only PTEs; without it a CPL0 guest would write
        // straight through the shadow MMU's write protection.
        let cr0 = Cr0Flags::from_bits_retain(sregs.cr0)
            | Cr0Flags::PROTECTED_MODE_ENABLE
            | Cr0Flags::MONITOR_COPROCESSOR
            | Cr0Flags::EXTENSION_TYPE
            | Cr0Flags::NUMERIC_ERROR
            | Cr0Flags::WRITE_PROTECT
            | Cr0Flags::PAGING;
        sregs.cr0 = (cr0
            - (Cr0Flags::EMULATE_COPROCESSOR
                | Cr0Flags::NOT_WRITE_THROUGH
                | Cr0Flags::CACHE_DISABLE))
            .bits();
        let has_xsave = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
        let mut cr4 =
            Cr4Flags::PHYSICAL_ADDRESS_EXTENSION | Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE;
        cr4.set(Cr4Flags::OSXSAVE, has_xsave);
        sregs.cr4 = cr4.bits();
        sregs.efer = (EferFlags::LONG_MODE_ENABLE
            | EferFlags::LONG_MODE_ACTIVE
            | EferFlags::NO_EXECUTE_ENABLE)
            .bits();
        sregs.cr3 = cr3;
        vcpu.set_sregs(&sregs)?;

        if has_xsave {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = XCR0_X87_SSE;
            vcpu.set_xcrs(&xcrs)?;
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu)?;

        let regs = kvm_regs {
            rip: entry,
            rsp: boot.stack_top,
            rdi: index as u64,
            rsi: direct_map(BOOT_INFO_GPA),
            // IOPL=3: the guest's port I/O (ucalls) is allowed at CPL3. IF clear.
            rflags: 0x2 | (3 << 12),
            ..Default::default()
        };
        vcpu.set_regs(&regs)?;
        Ok(vcpu)
    }
}
