//! Lays out guest RAM for a boot: loads the guest ELF, carves stacks, builds the boot page
//! tables (the direct map of guest RAM and the monitor link), splits the remaining frames
//! between the vCPUs, and writes the boot-info page.
//!
//! The boot tables here are the guest's own page tables: in `native` mode they are loaded into
//! CR3 as they are and the host walks them; in `kvm` mode they are what the shadow MMU shadows.
//! Either way the direct map is identity gfn -> gpa from the guest's point of view; where the
//! backing frame of a gfn lives is the memory layer's business, not the guest's.

use shadowlab_abi::layout::{
    direct_map, pt_index, pte, DIRECT_MAP_BASE, DIRECT_MAP_SLOT, MONITOR_SLOT, PAGE_SIZE,
};
use shadowlab_abi::{
    boot_off, GuestMode, VcpuBoot, BOOT_INFO_GPA, BOOT_MAGIC, GUEST_LOAD_GPA, HYPERCALL_MMIO_GPA,
    MAX_VCPUS, WORKLOAD_BASE_ID,
};
use shadowlab_workloads::{Run, Workload};

use super::elf::{ElfError, ElfImage};
use super::error::KvmError;
use super::layout::{SHARED_GPA, STACK_SIZE};
use super::monitor;
use crate::mem::GuestPhys;

/// What the guest runs and with which parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GuestParams {
    /// Program id (`shadowlab_abi::program` or a workload id).
    pub program: u64,
    /// Iterations.
    pub iters: u64,
    /// Seed.
    pub seed: u64,
    /// Program-specific parameters.
    pub params: [u64; 4],
}

impl GuestParams {
    /// A built-in program of the guest runtime (`shadowlab_abi::program`).
    pub fn builtin(program: u64, iters: u64) -> Self {
        Self {
            program,
            iters,
            seed: 0,
            params: [0; 4],
        }
    }

    /// A workload of `shadowlab-workloads`, with its parameters.
    pub fn workload(w: &Workload) -> Self {
        let index = Workload::ALL
            .iter()
            .position(|x| x.name() == w.name())
            .unwrap_or(0) as u64;
        let p = w.params();
        Self {
            program: WORKLOAD_BASE_ID + index,
            iters: p.iters,
            seed: p.seed,
            params: [p.size, 0, 0, 0],
        }
    }
}

/// The result of laying out RAM: where each vCPU starts.
#[derive(Clone, Debug)]
pub struct BootPlan {
    /// Entry point (virtual).
    pub entry: u64,
    /// Per-vCPU boot parameters (also written into the boot-info page).
    pub vcpus: Vec<VcpuBoot>,
    /// First frame not used by the boot (the start of the free frames).
    pub boot_end: u64,
}

/// A bump allocator over guest-physical frames.
struct Frames {
    next: u64,
    end: u64,
    ram: u64,
}

impl Frames {
    fn alloc(&mut self, bytes: u64, what: &str) -> Result<u64, KvmError> {
        let at = self.next;
        let bytes = bytes.next_multiple_of(PAGE_SIZE);
        if at + bytes > self.end {
            return Err(KvmError::RamTooSmall {
                ram: self.ram,
                what: what.to_string(),
            });
        }
        self.next += bytes;
        Ok(at)
    }
}

fn elf_err(index: usize, what: String) -> KvmError {
    KvmError::Elf(ElfError::BadSegment { index, what })
}

/// Copies the image's PT_LOAD segments into `ram` at their physical addresses.
pub fn load_elf<M: GuestPhys + ?Sized>(ram: &M, image: &ElfImage<'_>) -> Result<(), KvmError> {
    for (index, seg) in image.segments.iter().enumerate() {
        if seg.vaddr.wrapping_sub(seg.paddr) != DIRECT_MAP_BASE {
            return Err(elf_err(
                index,
                format!(
                    "vaddr {:#x} is not the direct map of paddr {:#x}",
                    seg.vaddr, seg.paddr
                ),
            ));
        }
        if seg.paddr < GUEST_LOAD_GPA || seg.paddr + seg.mem_size > ram.ram_size() {
            return Err(elf_err(
                index,
                format!(
                    "paddr {:#x}+{:#x} outside guest RAM above the load address",
                    seg.paddr, seg.mem_size
                ),
            ));
        }
        ram.write_bytes(seg.paddr, image.data(seg))?;
        ram.fill_zero(
            seg.paddr + seg.file_size as u64,
            seg.mem_size - seg.file_size as u64,
        )?;
    }
    Ok(())
}

/// Lays out RAM for `nr_vcpus` vCPUs running `params` in `mode`, and writes everything.
pub fn prepare<M: GuestPhys + ?Sized>(
    ram: &M,
    image: &ElfImage<'_>,
    nr_vcpus: usize,
    mode: GuestMode,
    params: &GuestParams,
    hypercall_mmio: bool,
) -> Result<BootPlan, KvmError> {
    if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
        return Err(KvmError::VcpuCount {
            vcpus: nr_vcpus,
            max: MAX_VCPUS,
        });
    }
    let ram_size = ram.ram_size();
    load_elf(ram, image)?;
    let mut frames = Frames {
        next: image.phys_end().next_multiple_of(PAGE_SIZE),
        end: ram_size,
        ram: ram_size,
    };

    // Stacks, each above an unmapped guard page.
    let mut guards = Vec::with_capacity(nr_vcpus);
    let mut stack_tops = Vec::with_capacity(nr_vcpus);
    for _ in 0..nr_vcpus {
        let guard = frames.alloc(PAGE_SIZE, "stack guard pages")?;
        let stack = frames.alloc(STACK_SIZE, "vCPU stacks")?;
        guards.push(guard);
        stack_tops.push(direct_map(stack + STACK_SIZE));
    }

    // The direct map: one PDPT, PDs and PTs for every RAM frame (4 KiB pages only).
    let pdpt = frames.alloc(PAGE_SIZE, "the direct map's PDPT")?;
    let nr_pts = ram_size.div_ceil(512 * PAGE_SIZE);
    let nr_pds = nr_pts.div_ceil(512);
    let pds = frames.alloc(nr_pds * PAGE_SIZE, "the direct map's PDs")?;
    let pts = frames.alloc(nr_pts * PAGE_SIZE, "the direct map's PTs")?;
    let roots = frames.alloc(nr_vcpus as u64 * PAGE_SIZE, "the vCPUs' boot roots")?;
    let mmio_pd = frames.alloc(PAGE_SIZE, "the MMIO window's PD")?;
    let mmio_pt = frames.alloc(PAGE_SIZE, "the MMIO window's PT")?;
    let boot_end = frames.next;
    let tables_end = boot_end;
    ram.fill_zero(pdpt, tables_end - pdpt)?;

    // U: the guest runs at CPL3 (see `monitor`); the monitor's own tables stay supervisor-only.
    let table = pte::P | pte::W | pte::U | pte::A;
    for gfn in 0..ram_size / PAGE_SIZE {
        let gpa = gfn * PAGE_SIZE;
        if gpa == 0 || guards.contains(&gpa) {
            continue; // null page and stack guards stay unmapped
        }
        let va = direct_map(gpa);
        let pt = pts + (gfn / 512) * PAGE_SIZE;
        ram.write_u64(
            pt + pt_index(va, 1) as u64 * 8,
            gpa | pte::P | pte::W | pte::U | pte::A | pte::D,
        )?;
    }
    for i in 0..nr_pts {
        let pd = pds + (i / 512) * PAGE_SIZE;
        ram.write_u64(pd + (i % 512) * 8, (pts + i * PAGE_SIZE) | table)?;
    }
    for i in 0..nr_pds {
        ram.write_u64(
            pdpt + pt_index(DIRECT_MAP_BASE, 3) as u64 * 8 + i * 8,
            (pds + i * PAGE_SIZE) | table,
        )?;
    }

    // The MMIO hypercall window, in the direct map's slot (so every root that shares the
    // direct map reaches it) but above guest RAM, backed by no memslot.
    let window = direct_map(HYPERCALL_MMIO_GPA);
    ram.write_u64(pdpt + pt_index(window, 3) as u64 * 8, mmio_pd | table)?;
    ram.write_u64(mmio_pd + pt_index(window, 2) as u64 * 8, mmio_pt | table)?;
    ram.write_u64(
        mmio_pt + pt_index(window, 1) as u64 * 8,
        HYPERCALL_MMIO_GPA | pte::P | pte::W | pte::U | pte::A | pte::D | pte::NX,
    )?;

    // Per-vCPU roots: the direct map and the monitor, nothing in the user half.
    let per_vcpu_frames = (ram_size - boot_end) / PAGE_SIZE / nr_vcpus as u64;
    if per_vcpu_frames < 16 {
        return Err(KvmError::RamTooSmall {
            ram: ram_size,
            what: format!("{per_vcpu_frames} free frames per vCPU"),
        });
    }
    let mut vcpus = Vec::with_capacity(nr_vcpus);
    for (i, &stack_top) in stack_tops.iter().enumerate() {
        let root = roots + i as u64 * PAGE_SIZE;
        ram.write_u64(root + DIRECT_MAP_SLOT as u64 * 8, pdpt | table)?;
        ram.write_u64(root + MONITOR_SLOT as u64 * 8, monitor::pml4_entry())?;
        let free_start = boot_end + i as u64 * per_vcpu_frames * PAGE_SIZE;
        vcpus.push(VcpuBoot {
            boot_root: root,
            free_start,
            free_end: free_start + per_vcpu_frames * PAGE_SIZE,
            stack_top,
        });
    }

    // The boot-info page and the shared page.
    ram.fill_zero(BOOT_INFO_GPA, PAGE_SIZE)?;
    ram.fill_zero(SHARED_GPA, PAGE_SIZE)?;
    let b = BOOT_INFO_GPA;
    ram.write_u64(b + boot_off::MAGIC, BOOT_MAGIC)?;
    ram.write_u64(b + boot_off::MODE, mode as u64)?;
    ram.write_u64(b + boot_off::NR_VCPUS, nr_vcpus as u64)?;
    ram.write_u64(b + boot_off::PROGRAM, params.program)?;
    ram.write_u64(b + boot_off::ITERS, params.iters)?;
    ram.write_u64(b + boot_off::SEED, params.seed)?;
    for (i, p) in params.params.iter().enumerate() {
        ram.write_u64(b + boot_off::PARAMS + 8 * i as u64, *p)?;
    }
    ram.write_u64(b + boot_off::RAM_SIZE, ram_size)?;
    ram.write_u64(b + boot_off::SHARED_GPA, SHARED_GPA)?;
    ram.write_u64(b + boot_off::HYPERCALL_MMIO, u64::from(hypercall_mmio))?;
    for (i, v) in vcpus.iter().enumerate() {
        let at = b + boot_off::VCPUS + i as u64 * boot_off::VCPU_SIZE;
        ram.write_u64(at, v.boot_root)?;
        ram.write_u64(at + 8, v.free_start)?;
        ram.write_u64(at + 16, v.free_end)?;
        ram.write_u64(at + 24, v.stack_top)?;
    }
    if image.entry < DIRECT_MAP_BASE + GUEST_LOAD_GPA || image.entry >= direct_map(image.phys_end())
    {
        return Err(KvmError::Elf(ElfError::NotX86_64Exec(
            "entry point outside the loaded image",
        )));
    }
    Ok(BootPlan {
        entry: image.entry,
        vcpus,
        boot_end,
    })
}

/// Walks the boot tables in `ram` like the hardware would (4-level, 4 KiB pages): the
/// guest-physical address `gva` maps to, if present. Used by tests and by crash reports.
pub fn walk<M: GuestPhys + ?Sized>(ram: &M, root: u64, gva: u64) -> Option<u64> {
    let mut table = root;
    for level in (1..=4).rev() {
        let e = ram.read_u64(table + pt_index(gva, level) as u64 * 8).ok()?;
        if e & pte::P == 0 || (level > 1 && e & pte::PS != 0) {
            return None;
        }
        table = e & pte::ADDR_MASK;
    }
    Some(table | (gva & (PAGE_SIZE - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::guest_image::GUEST_ELF;
    use crate::kvm::hostmem::new_region;

    #[test]
    fn the_direct_map_maps_every_frame_but_null_and_guards() {
        let ram = new_region(8 << 20).unwrap();
        let img = ElfImage::parse(GUEST_ELF).unwrap();
        let params = GuestParams {
            program: 1,
            iters: 10,
            seed: 0,
            params: [0; 4],
        };
        let plan = prepare(&ram, &img, 2, GuestMode::Native, &params, true).unwrap();
        assert_eq!(
            walk(
                &ram,
                plan.vcpus[0].boot_root,
                direct_map(HYPERCALL_MMIO_GPA) + 0xe0
            ),
            Some(HYPERCALL_MMIO_GPA + 0xe0)
        );
        let root = plan.vcpus[1].boot_root;
        assert_eq!(walk(&ram, root, direct_map(0x1000)), Some(0x1000));
        assert_eq!(
            walk(&ram, root, direct_map((8 << 20) - 8)),
            Some((8 << 20) - 8)
        );
        assert_eq!(walk(&ram, root, direct_map(0)), None, "null page unmapped");
        let guard = plan.vcpus[0].stack_top - STACK_SIZE - PAGE_SIZE;
        assert_eq!(walk(&ram, root, guard), None, "stack guard unmapped");
        assert_eq!(
            walk(&ram, root, plan.entry),
            Some(plan.entry - DIRECT_MAP_BASE)
        );
        assert_eq!(walk(&ram, root, shadowlab_abi::layout::WORKLOAD_BASE), None);
        // The monitor is linked, outside guest RAM.
        assert_eq!(ram.read_u64(root + 511 * 8).unwrap(), monitor::pml4_entry());
        // Free frames are disjoint, inside RAM, after the boot frames.
        assert!(plan.vcpus[0].free_end <= plan.vcpus[1].free_start);
        assert!(plan.vcpus[0].free_start >= plan.boot_end);
        assert!(plan.vcpus[1].free_end <= 8 << 20);
        assert_eq!(ram.read_u64(BOOT_INFO_GPA).unwrap(), BOOT_MAGIC);
    }

    #[test]
    fn too_little_ram_is_an_error_not_a_panic() {
        let ram = new_region(1 << 20).unwrap();
        let img = ElfImage::parse(GUEST_ELF).unwrap();
        let params = GuestParams {
            program: 1,
            iters: 1,
            seed: 0,
            params: [0; 4],
        };
        assert!(prepare(&ram, &img, 1, GuestMode::Native, &params, false).is_err());
        assert!(prepare(&ram, &img, 0, GuestMode::Native, &params, false).is_err());
    }
}
