//! Every parameter checked before a VM or its memory is set up: a bad one is a one-line error
//! with exit code 2, on every backend, instead of a guest that boots only to fail its own
//! checks (a GUEST_ASSERT with a register dump), a VM that cannot be laid out (exit 1), or a
//! run that goes on until the watchdog.
//!
//! Checked, in order: the workload's own parameters and the bound on `--iters`
//! ([`Run::validate`], the same check the workload makes first on every vCPU); `--ram-mib`
//! against the backend's layout; and the frames each vCPU's workload allocates
//! ([`Run::frames_needed`]) against the free frames the backend's boot layout leaves each
//! vCPU, computed from the sizes alone.

use shadowlab_workloads::{Run, Workload};

use super::{Backend, WorkerArgs, WorkerError};
use crate::kvm::layout::{MAX_RAM, MIN_RAM, STACK_SIZE};

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Entries per page-table page.
const ENTRIES: u64 = 512;
/// The kvm layout refuses fewer free frames per vCPU than this (`kvm::boot::prepare`).
const KVM_MIN_FREE_FRAMES: u64 = 16;

/// Checks `args` and `workload` for `args.backend`; see the module docs.
pub fn validate(args: &WorkerArgs, workload: &Workload) -> Result<(), WorkerError> {
    let nr_vcpus = args.vcpus as usize;
    workload.validate(nr_vcpus)?;
    let ram = args.ram_mib.saturating_mul(MIB);
    let (have, floor) = match args.backend {
        Backend::Sim => (sim_free_frames(ram, nr_vcpus), 1),
        Backend::Kvm | Backend::Native => {
            if !(MIN_RAM..=MAX_RAM).contains(&ram) || ram % (2 * MIB) != 0 {
                return Err(WorkerError::RamSize {
                    backend: backend_name(args.backend),
                    ram_mib: args.ram_mib,
                    min: MIN_RAM / MIB,
                    max: MAX_RAM / MIB,
                });
            }
            (kvm_free_frames(ram, nr_vcpus), KVM_MIN_FREE_FRAMES)
        }
    };
    // The guest image could not be parsed: the boot reports that itself.
    let Some(have) = have else { return Ok(()) };
    let need = workload.frames_needed(nr_vcpus).max(floor);
    if need > have {
        return Err(WorkerError::Frames {
            workload: workload.name(),
            size: workload.params().size,
            need,
            have,
            backend: backend_name(args.backend),
            ram_mib: args.ram_mib,
            vcpus: args.vcpus,
        });
    }
    Ok(())
}

/// The backend's name on the command line.
fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sim => "sim",
        Backend::Kvm => "kvm",
        Backend::Native => "native",
    }
}

/// Free frames of the vCPU with the fewest on `sim`: what `mem::boot::build_boot_tables` leaves
/// after the direct map's tables, one PML4 per vCPU and the shared page (0 if they do not fit).
fn sim_free_frames(ram: u64, nr_vcpus: usize) -> Option<u64> {
    let frames = ram / PAGE;
    let pts = frames.div_ceil(ENTRIES);
    let pds = pts.div_ceil(ENTRIES);
    let pdpts = pds.div_ceil(ENTRIES);
    let boot = pts + pds + pdpts + nr_vcpus as u64 + 1;
    if pdpts > 1 {
        return Some(0);
    }
    Some(frames.saturating_sub(boot) / nr_vcpus as u64)
}

/// Free frames per vCPU on `kvm` and `native`: what `kvm::boot::prepare` leaves after the
/// guest image, each vCPU's guard page and stack, the direct map's tables, the boot roots and
/// the MMIO window's two tables. `None` if the embedded guest image does not parse.
fn kvm_free_frames(ram: u64, nr_vcpus: usize) -> Option<u64> {
    let image = crate::kvm::elf::ElfImage::parse(crate::kvm::guest_image::GUEST_ELF).ok()?;
    let nr = nr_vcpus as u64;
    let pts = ram.div_ceil(ENTRIES * PAGE);
    let pds = pts.div_ceil(ENTRIES);
    let boot_end = image.phys_end().next_multiple_of(PAGE)
        + nr * (PAGE + STACK_SIZE.next_multiple_of(PAGE))
        + (1 + pds + pts + nr + 2) * PAGE;
    Some(ram.saturating_sub(boot_end) / PAGE / nr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::boot::{prepare, GuestParams};
    use crate::kvm::elf::ElfImage;
    use crate::kvm::guest_image::GUEST_ELF;
    use crate::kvm::hostmem::new_region;
    use crate::mem::boot::{build_boot_tables, BootOptions};
    use crate::mem::{FrameMap, GuestMemory, MemConfig};
    use shadowlab_abi::GuestMode;

    /// The estimate is the layout's own count, not just a bound of it.
    #[test]
    fn free_frames_match_the_boot_layouts() {
        for (mib, nr) in [(4, 1), (8, 3), (16, 2), (64, 1), (64, 8)] {
            let ram = mib * MIB;
            let mem = GuestMemory::new(MemConfig {
                ram_bytes: ram,
                pool_pages: 16,
                frame_map: FrameMap::Identity,
            })
            .unwrap();
            let boot = build_boot_tables(&mem, nr, BootOptions { user: true }).unwrap();
            let least = boot.free.iter().map(|r| (r.end - r.start) / PAGE).min();
            assert_eq!(sim_free_frames(ram, nr), least, "sim {mib} MiB {nr} vCPUs");

            let region = new_region(ram).unwrap();
            let img = ElfImage::parse(GUEST_ELF).unwrap();
            let params = GuestParams::builtin(1, 1);
            match prepare(&region, &img, nr, GuestMode::Native, &params, true) {
                Ok(plan) => {
                    let least = plan
                        .vcpus
                        .iter()
                        .map(|v| (v.free_end - v.free_start) / PAGE);
                    assert_eq!(
                        kvm_free_frames(ram, nr),
                        least.min(),
                        "kvm {mib} MiB {nr} vCPUs"
                    );
                }
                // The layout refuses it: the estimate says fewer than the kvm floor.
                Err(_) => assert!(kvm_free_frames(ram, nr).unwrap() < KVM_MIN_FREE_FRAMES),
            }
        }
    }
}
