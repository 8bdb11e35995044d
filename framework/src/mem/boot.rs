//! Boot page tables: what each vCPU's CR3 points at before the workload runs.
//!
//! Every vCPU gets its own PML4 (so that workloads can give each vCPU its own user half); all of
//! them share one direct map of guest RAM at [`layout::DIRECT_MAP_BASE`] (`layout::DIRECT_MAP_SLOT`), built
//! from 4 KiB pages only, as the layout requires. Nothing else is mapped: the user half is
//! empty and slot 511 is left for the VMM's monitor. The tables live at the bottom of guest RAM;
//! one zeroed page after them is shared by every vCPU (`Cpu::shared_page`: barriers and
//! hand-offs between vCPUs), and the frames above are split into one disjoint, page-aligned
//! range per vCPU for the workloads' frame allocators.

use std::ops::Range;
use std::sync::atomic::Ordering;

use shadowlab_abi::layout::{self, pte};

use super::{GuestMemory, MemError};

const PAGE: u64 = layout::PAGE_SIZE;
const ENTRIES: u64 = layout::PT_ENTRIES as u64;

/// Why boot tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No vCPUs were asked for.
    #[error("boot page tables need at least one vCPU")]
    NoVcpus,
    /// Guest RAM cannot hold the tables plus at least one free frame per vCPU.
    #[error("guest RAM of {ram_frames} frames cannot hold {needed} boot table frames plus one free frame per vCPU")]
    RamTooSmall {
        /// Frames of guest RAM.
        ram_frames: u64,
        /// Frames the tables need.
        needed: u64,
    },
    /// Writing the tables failed.
    #[error("writing boot page tables: {0}")]
    Mem(#[from] MemError),
}

/// Options for [`build_boot_tables`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BootOptions {
    /// Set U in the direct map (for guests whose workloads run at CPL3: the `sim` backend's
    /// vCPUs by default, like the `kvm` guest, whose tables `kvm::boot` builds with U).
    pub user: bool,
}

/// What [`build_boot_tables`] built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTables {
    /// Guest-physical address of each vCPU's PML4 (`Cpu::boot_root`).
    pub roots: Vec<u64>,
    /// Each vCPU's free guest-physical range (`Cpu::free_frames`), page-aligned and disjoint.
    pub free: Vec<Range<u64>>,
    /// Guest-physical addresses of every table frame (PML4s included).
    pub table_frames: Range<u64>,
    /// Guest-physical address of the page shared by every vCPU (`Cpu::shared_page`), zeroed,
    /// in no vCPU's free range.
    pub shared: u64,
}

/// Writes the boot page tables into guest RAM for `nr_vcpus` vCPUs.
pub fn build_boot_tables(
    mem: &GuestMemory,
    nr_vcpus: usize,
    opts: BootOptions,
) -> Result<BootTables, BootError> {
    if nr_vcpus == 0 {
        return Err(BootError::NoVcpus);
    }
    let ram = mem.ram_frames();
    let pts = ram.div_ceil(ENTRIES);
    let pds = pts.div_ceil(ENTRIES);
    let pdpts = pds.div_ceil(ENTRIES);
    let needed = pts + pds + pdpts + nr_vcpus as u64 + 1;
    if pdpts > 1 || needed + nr_vcpus as u64 > ram {
        return Err(BootError::RamTooSmall {
            ram_frames: ram,
            needed,
        });
    }
    // Leaves are created accessed and dirty, as a kernel's direct map usually is: the first
    // write to a page then needs no fault just to set D.
    let flags = pte::P | pte::W | if opts.user { pte::U } else { 0 };
    let w = |gpa: u64, v: u64| mem.write_gpa_u64(gpa, v, Ordering::Relaxed);
    // Frame numbers: PTs first, then PDs, then the PDPT, then one PML4 per vCPU.
    let pt0 = 0;
    let pd0 = pt0 + pts;
    let pdpt = pd0 + pds;
    let pml40 = pdpt + 1;
    for gfn in 0..ram {
        w(
            (pt0 + gfn / ENTRIES) * PAGE + (gfn % ENTRIES) * 8,
            (gfn * PAGE) | flags | pte::A | pte::D,
        )?;
    }
    for t in 0..pts {
        w(
            (pd0 + t / ENTRIES) * PAGE + (t % ENTRIES) * 8,
            ((pt0 + t) * PAGE) | flags,
        )?;
    }
    for d in 0..pds {
        w(pdpt * PAGE + d * 8, ((pd0 + d) * PAGE) | flags)?;
    }
    let mut roots = Vec::with_capacity(nr_vcpus);
    for v in 0..nr_vcpus as u64 {
        let root = (pml40 + v) * PAGE;
        w(
            root + layout::DIRECT_MAP_SLOT as u64 * 8,
            (pdpt * PAGE) | flags,
        )?;
        roots.push(root);
    }
    let shared = pml40 + nr_vcpus as u64;
    mem.write_gpa(shared * PAGE, &[0u8; PAGE as usize])?;
    let first_free = shared + 1;
    let per = (ram - first_free) / nr_vcpus as u64;
    let free = (0..nr_vcpus as u64)
        .map(|v| {
            let start = first_free + v * per;
            let end = if v + 1 == nr_vcpus as u64 {
                ram
            } else {
                start + per
            };
            start * PAGE..end * PAGE
        })
        .collect();
    Ok(BootTables {
        roots,
        free,
        table_frames: 0..shared * PAGE,
        shared: shared * PAGE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{FrameMap, MemConfig};

    fn mem(frames: u64) -> GuestMemory {
        GuestMemory::new(MemConfig {
            ram_bytes: frames * PAGE,
            pool_pages: 4,
            frame_map: FrameMap::Permuted { seed: 5 },
        })
        .unwrap()
    }

    /// Walks guest tables by hand (independent of the MMU's walker).
    fn walk(m: &GuestMemory, root: u64, gva: u64) -> Option<u64> {
        let mut table = root;
        for level in (1..=4).rev() {
            let e = m
                .read_gpa_u64(
                    table + layout::pt_index(gva, level) as u64 * 8,
                    Ordering::Relaxed,
                )
                .ok()?;
            if e & pte::P == 0 {
                return None;
            }
            table = e & pte::ADDR_MASK;
        }
        Some(table + gva % PAGE)
    }

    #[test]
    fn direct_map_covers_all_ram_for_every_vcpu() {
        let m = mem(1100);
        let b = build_boot_tables(&m, 3, BootOptions::default()).unwrap();
        assert_eq!(b.roots.len(), 3);
        for &root in &b.roots {
            for gpa in [0, 5 * PAGE + 8, 1099 * PAGE + 4095] {
                assert_eq!(walk(&m, root, layout::direct_map(gpa)), Some(gpa));
            }
            assert_eq!(walk(&m, root, layout::direct_map(1100 * PAGE)), None);
            assert_eq!(walk(&m, root, layout::WORKLOAD_BASE), None);
            assert_eq!(walk(&m, root, layout::MONITOR_BASE), None);
        }
        // The shared page sits between the tables and the free ranges.
        assert_eq!(b.shared, b.table_frames.end);
        // Free ranges: disjoint, aligned, above the tables and the shared page, inside RAM.
        let mut prev_end = b.shared + PAGE;
        for r in &b.free {
            assert_eq!(r.start, prev_end);
            assert!(r.end > r.start && r.start % PAGE == 0 && r.end % PAGE == 0);
            prev_end = r.end;
        }
        assert_eq!(prev_end, 1100 * PAGE);
    }

    #[test]
    fn user_option_sets_u_at_every_level_and_nothing_else_changes() {
        for user in [false, true] {
            let m = mem(64);
            let b = build_boot_tables(&m, 1, BootOptions { user }).unwrap();
            let gva = layout::direct_map(9 * PAGE);
            let mut table = b.roots[0];
            for level in (1..=4).rev() {
                let e = m
                    .read_gpa_u64(
                        table + layout::pt_index(gva, level) as u64 * 8,
                        Ordering::Relaxed,
                    )
                    .unwrap();
                assert_eq!(e & pte::U != 0, user, "level {level}: {e:#x}");
                assert_eq!(e & (pte::P | pte::W | pte::NX), pte::P | pte::W);
                table = e & pte::ADDR_MASK;
            }
        }
    }

    #[test]
    fn too_little_ram_or_no_vcpus_is_an_error() {
        assert!(matches!(
            build_boot_tables(&mem(4), 2, BootOptions::default()),
            Err(BootError::RamTooSmall { .. })
        ));
        assert!(matches!(
            build_boot_tables(&mem(64), 0, BootOptions::default()),
            Err(BootError::NoVcpus)
        ));
    }
}
