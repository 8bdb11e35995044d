//! One vCPU's file descriptor with typed ioctls, as Firecracker's `KvmVcpu`: each method maps
//! its ioctl's errno to its own [`VcpuError`] variant, naming the vCPU, once.

use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, KVM_EXIT_INTERNAL_ERROR,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

/// An `errno` from an ioctl.
pub type Errno = kvm_ioctls::Error;

/// A vCPU ioctl that failed: one variant per ioctl, each with the vCPU index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU {vcpu}: {source}")]
    Create {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 on vCPU {vcpu}: {source}")]
    SetCpuid2 {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_GET_SREGS failed.
    #[error("KVM_GET_SREGS on vCPU {vcpu}: {source}")]
    GetSregs {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_SREGS failed.
    #[error("KVM_SET_SREGS on vCPU {vcpu}: {source}")]
    SetSregs {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_GET_REGS failed.
    #[error("KVM_GET_REGS on vCPU {vcpu}: {source}")]
    GetRegs {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_REGS failed.
    #[error("KVM_SET_REGS on vCPU {vcpu}: {source}")]
    SetRegs {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_GET_VCPU_EVENTS failed.
    #[error("KVM_GET_VCPU_EVENTS on vCPU {vcpu}: {source}")]
    GetVcpuEvents {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_VCPU_EVENTS failed.
    #[error("KVM_SET_VCPU_EVENTS on vCPU {vcpu}: {source}")]
    SetVcpuEvents {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_XCRS failed.
    #[error("KVM_SET_XCRS on vCPU {vcpu}: {source}")]
    SetXcrs {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_SET_FPU failed.
    #[error("KVM_SET_FPU on vCPU {vcpu}: {source}")]
    SetFpu {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
    /// KVM_RUN failed (other than EINTR, which is a kick).
    #[error("KVM_RUN on vCPU {vcpu}: {source}")]
    Run {
        /// vCPU index.
        vcpu: usize,
        /// The errno.
        source: Errno,
    },
}

/// vCPU `index` of a VM: its fd and the ioctls the VMM uses on it.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: usize,
}

impl Vcpu {
    /// KVM_CREATE_VCPU with id `index` on `vm`.
    pub fn create(vm: &VmFd, index: usize) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(index as u64)
            .map_err(|source| VcpuError::Create {
                vcpu: index,
                source,
            })?;
        Ok(Self { fd, index })
    }

    /// The vCPU's index (its KVM vCPU id).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The underlying fd (for its binary statistics).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// KVM_SET_CPUID2.
    pub fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_cpuid2(cpuid)
            .map_err(|source| VcpuError::SetCpuid2 { vcpu, source })
    }

    /// KVM_GET_SREGS.
    pub fn get_sregs(&self) -> Result<kvm_sregs, VcpuError> {
        let vcpu = self.index;
        self.fd
            .get_sregs()
            .map_err(|source| VcpuError::GetSregs { vcpu, source })
    }

    /// KVM_SET_SREGS.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_sregs(sregs)
            .map_err(|source| VcpuError::SetSregs { vcpu, source })
    }

    /// KVM_GET_REGS.
    pub fn get_regs(&self) -> Result<kvm_regs, VcpuError> {
        let vcpu = self.index;
        self.fd
            .get_regs()
            .map_err(|source| VcpuError::GetRegs { vcpu, source })
    }

    /// KVM_SET_REGS.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_regs(regs)
            .map_err(|source| VcpuError::SetRegs { vcpu, source })
    }

    /// KVM_GET_VCPU_EVENTS.
    pub fn get_vcpu_events(&self) -> Result<kvm_vcpu_events, VcpuError> {
        let vcpu = self.index;
        self.fd
            .get_vcpu_events()
            .map_err(|source| VcpuError::GetVcpuEvents { vcpu, source })
    }

    /// KVM_SET_VCPU_EVENTS.
    pub fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_vcpu_events(events)
            .map_err(|source| VcpuError::SetVcpuEvents { vcpu, source })
    }

    /// KVM_SET_XCRS.
    pub fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_xcrs(xcrs)
            .map_err(|source| VcpuError::SetXcrs { vcpu, source })
    }

    /// KVM_SET_FPU.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), VcpuError> {
        let vcpu = self.index;
        self.fd
            .set_fpu(fpu)
            .map_err(|source| VcpuError::SetFpu { vcpu, source })
    }

    /// Loads `cr3` into the hardware CR3 (KVM_GET_SREGS, then KVM_SET_SREGS).
    pub fn set_cr3(&self, cr3: u64) -> Result<(), VcpuError> {
        let mut s = self.get_sregs()?;
        s.cr3 = cr3;
        self.set_sregs(&s)
    }

    /// KVM_RUN. `Ok(None)`: it returned EINTR (a kick, or `immediate_exit` set).
    pub fn run(&mut self) -> Result<Option<VcpuExit<'_>>, VcpuError> {
        let vcpu = self.index;
        match self.fd.run() {
            Ok(exit) => Ok(Some(exit)),
            Err(e) if e.errno() == libc::EINTR => Ok(None),
            Err(source) => Err(VcpuError::Run { vcpu, source }),
        }
    }

    /// The suberror of the last exit, if it was KVM_EXIT_INTERNAL_ERROR.
    pub fn internal_error_suberror(&mut self) -> Option<u32> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return None;
        }
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR (checked above), so `internal`
        // is the active member of the exit union, which KVM wrote before KVM_RUN returned.
        Some(unsafe { run.__bindgen_anon_1.internal.suberror })
    }

    /// The `immediate_exit` byte of the vCPU's `kvm_run` mapping, for the kick machinery
    /// (`kick::VcpuKick::register`). Valid as long as `self`.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit
    }
}
