//! Test rig shared by the MMU's unit tests.

use std::sync::Arc;

use shadowlab_abi::layout::{self, pte};

use super::walk::tests::TestGuest;
use super::{Access, FaultOutcome, Mmu, VcpuMmu};
use crate::BuildPolicy;

/// A gva in the workload half.
pub const GVA: u64 = layout::WORKLOAD_BASE + 0x4000_0000;

pub struct Rig {
    pub g: TestGuest,
    pub mmu: Mmu<BuildPolicy>,
    /// The guest PML4 (gpa) every vCPU of the rig starts on.
    pub root: u64,
}

impl Rig {
    pub fn new(vcpus: usize) -> Self {
        Self::with(256, 64, vcpus)
    }

    pub fn with(frames: u64, pool: u64, vcpus: usize) -> Self {
        let mut g = TestGuest::new(frames, pool);
        let root = g.frame();
        let mmu = Mmu::new(Arc::clone(&g.mem), vcpus).unwrap();
        Rig { g, mmu, root }
    }

    pub fn vcpu_no_cr3(&self, id: usize) -> VcpuMmu {
        self.mmu.vcpu(id).unwrap()
    }

    pub fn vcpu(&self, id: usize) -> VcpuMmu {
        let mut v = self.mmu.vcpu(id).unwrap();
        self.mmu.kvm_mmu_new_pgd(&mut v, self.root).unwrap();
        v
    }

    pub fn fault(&self, v: &mut VcpuMmu, gva: u64, access: Access) -> FaultOutcome {
        self.mmu.page_fault(v, gva, access).unwrap()
    }

    /// Maps the direct-map address of `gpa`'s page in the rig's root (P|W|D).
    pub fn direct_map_page(&mut self, gpa: u64) {
        let page = gpa & !0xfff;
        let root = self.root;
        self.g.map(
            root,
            layout::direct_map(page),
            page,
            pte::P | pte::W | pte::D,
        );
    }

    pub fn audit(&self) {
        if let Err(e) = self.mmu.audit() {
            panic!("MMU audit failed: {e}");
        }
    }
}
