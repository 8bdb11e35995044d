//! Does this host notice guest page-table entries that the VMM rewrites from userspace?
//!
//! The `kvm` backend writes shadow PTEs from the VMM process; the vCPU's hardware walks them.
//! On a host with two-dimensional paging that is plain memory. On a host that itself shadows
//! the guest's page tables (no EPT/NPT, as here) the host's shadow of a page it keeps
//! write-protected is only refreshed when the guest's own writes trap, so a userspace write may
//! go unnoticed. This probe runs the guest's COHERENCE_PROBE on its own page tables (native):
//! the guest maps a page, reads it, the VMM retargets the leaf PTE from userspace, and the guest
//! reads again after INVLPG, after a full flush and after a CR3 switch.
//!
//! `cargo run -p shadowlab-framework --example host_coherence`

use std::process::ExitCode;

use kvm_ioctls::VcpuExit;
use shadowlab_abi::{program, status, GuestMode, HYPERCALL_MMIO_GPA, NOP_PORT, UCALL_PORT};
use shadowlab_framework::kvm::boot::{self, GuestParams};
use shadowlab_framework::kvm::elf::ElfImage;
use shadowlab_framework::kvm::guest_image::GUEST_ELF;
use shadowlab_framework::kvm::hostmem::RegionExt;
use shadowlab_framework::kvm::layout::RAM_SLOT;
use shadowlab_framework::kvm::ucall::{self, Ucall};
use shadowlab_framework::kvm::vm::Vm;
use shadowlab_framework::mem::GuestPhys;

/// What the VMM does right after its userspace rewrite of the PTE.
#[derive(Clone, Copy, Debug)]
enum After {
    /// Nothing: the guest's own INVLPG / flush / CR3 switch must make it visible.
    Nothing,
    /// KVM_SET_SREGS with CR4.PGE toggled (a full MMU context reset in the host).
    ResetContext,
    /// Delete and re-add guest RAM's memslot (the host drops its shadow pages of the slot).
    CycleMemslot,
}

fn main() -> ExitCode {
    let name = |x: u64| match x {
        0xaaaa => "old page",
        0xbbbb => "new page",
        _ => "garbage",
    };
    for after in [After::Nothing, After::ResetContext, After::CycleMemslot] {
        match probe(after) {
            Ok(v) => {
                println!("VMM action after its rewrite: {after:?}");
                println!(
                    "  read before the rewrite:     {:#x} ({})",
                    v[0],
                    name(v[0])
                );
                println!(
                    "  after INVLPG:                {:#x} ({})",
                    v[1],
                    name(v[1])
                );
                println!(
                    "  after a full TLB flush:      {:#x} ({})",
                    v[2],
                    name(v[2])
                );
                println!(
                    "  after a CR3 switch and back: {:#x} ({})",
                    v[3],
                    name(v[3])
                );
            }
            Err(e) => {
                eprintln!("host_coherence: error ({after:?}): {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn probe(after: After) -> Result<[u64; 4], String> {
    let vm = Vm::new(64 << 20, 1).map_err(|e| e.to_string())?;
    let image = ElfImage::parse(GUEST_ELF).map_err(|e| e.to_string())?;
    let params = GuestParams::builtin(program::COHERENCE_PROBE, 0);
    let plan = boot::prepare(vm.ram(), &image, 1, GuestMode::Native, &params, true)
        .map_err(|e| e.to_string())?;
    let mut vcpu = vm
        .create_vcpu(0, plan.entry, &plan.vcpus[0], plan.vcpus[0].boot_root)
        .map_err(|e| e.to_string())?;
    let ram = vm.ram();
    loop {
        let (port, value) = match vcpu.run().map_err(|e| e.to_string())? {
            Some(VcpuExit::MmioWrite(gpa, d)) if gpa >= HYPERCALL_MMIO_GPA && d.len() == 4 => (
                (gpa - HYPERCALL_MMIO_GPA) as u16,
                u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            ),
            other => return Err(format!("unexpected exit {other:?}")),
        };
        if port == NOP_PORT {
            continue;
        }
        if port != UCALL_PORT {
            return Err(format!("hypercall to port {port:#x}"));
        }
        let gpa = u64::from(value);
        match ucall::read(ram, gpa).map_err(|e| e.to_string())? {
            Ucall::Sync {
                stage: program::COHERENCE_STAGE,
                value: leaf,
            } => {
                let new_pte = ram
                    .read_u64(shadowlab_framework::kvm::layout::SHARED_GPA)
                    .map_err(|e| e.to_string())?;
                // The rewrite, from userspace, while the guest's translation is live.
                ram.write_u64(leaf, new_pte).map_err(|e| e.to_string())?;
                match after {
                    After::Nothing => {}
                    After::ResetContext => {
                        let mut s = vcpu.get_sregs().map_err(|e| e.to_string())?;
                        s.cr4 ^= 1 << 7;
                        vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
                        s.cr4 ^= 1 << 7;
                        vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
                    }
                    After::CycleMemslot => {
                        let t0 = std::time::Instant::now();
                        let mut region = kvm_bindings::kvm_userspace_memory_region {
                            slot: RAM_SLOT,
                            flags: 0,
                            guest_phys_addr: 0,
                            memory_size: 0,
                            userspace_addr: ram.host_addr(),
                        };
                        // SAFETY: deleting the slot (size 0) and re-adding it over the same live
                        // mapping, which outlives the VM.
                        unsafe { vm.fd().set_user_memory_region(region) }
                            .map_err(|e| e.to_string())?;
                        region.memory_size = ram.size();
                        // SAFETY: as above.
                        unsafe { vm.fd().set_user_memory_region(region) }
                            .map_err(|e| e.to_string())?;
                        println!(
                            "  (deleting and re-adding the {} MiB memslot took {:?})",
                            ram.size() >> 20,
                            t0.elapsed()
                        );
                    }
                }
            }
            Ucall::Done(a) => return Ok([a[0], a[1], a[2], a[3]]),
            Ucall::Abort {
                file,
                line,
                message,
            } => return Err(format!("guest assert {file}:{line}: {message}")),
            _ => {}
        }
        ucall::write_status(ram, gpa, status::OK).map_err(|e| e.to_string())?;
    }
}
