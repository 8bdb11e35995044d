//! The VM's machine-physical layout and the guest-frame → backing-frame map.
//!
//! "Machine-physical" (mpa/mfn) is what the hardware walker sees: on `kvm` it is KVM's
//! guest-physical space (one memslot at 0 covering the whole [`MemRegion`]); on `sim` it is
//! what the software walker reads. "Guest-physical" (gpa/gfn) is what the paravirtual guest
//! believes: frames `0..ram_frames`. The shadow MMU translates one into the other.
//!
//! ```text
//! mfn 0 .. ram_frames                 guest RAM backing frames (a permutation of the gfns)
//! mfn pool_base .. +pool_frames       the shadow pool: shadow page tables (not guest RAM)
//! mfn monitor .. +MONITOR_FRAMES      the VMM-owned monitor area (on kvm: GDT/IDT/TSS/stubs
//!                                     and the page tables that map them at slot 511)
//! ```
//!
//! The gfn → mfn map is a seeded permutation by default, so a guest (or a backend bug) that
//! uses a guest-physical address as if it were machine-physical reads the wrong frame and the
//! workloads' self-checks notice. [`FrameMap::Identity`] exists for the `native` backend,
//! where the guest's own page tables are loaded directly and gpa must equal mpa.

use std::sync::atomic::Ordering;

use super::region::{MemError, MemRegion, PAGE_SIZE};
use shadowlab_workloads::rng::Rng;

const PAGE: u64 = PAGE_SIZE as u64;

/// Frames reserved for the VMM's monitor after the pool: one page of GDT/IDT/TSS/stubs needs
/// three more for the PDPT/PD/PT that map it at PML4 slot 511; the rest is spare.
pub const MONITOR_FRAMES: u64 = 8;

/// How guest frames map to backing frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameMap {
    /// gfn == mfn (for `native`).
    Identity,
    /// A Fisher–Yates permutation of the RAM frames drawn from `seed`.
    Permuted {
        /// The seed.
        seed: u64,
    },
}

/// Sizes of the machine-physical layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemConfig {
    /// Bytes of guest RAM (a non-zero multiple of 4 KiB).
    pub ram_bytes: u64,
    /// Pages in the shadow pool (at least one).
    pub pool_pages: u64,
    /// gfn → mfn map.
    pub frame_map: FrameMap,
}

/// Guest memory: one [`MemRegion`] laid out as RAM backing + shadow pool + monitor page, and
/// the gfn ↔ mfn maps. Shared (`Arc`) by the MMU and every vCPU of a backend.
#[derive(Debug)]
pub struct GuestMemory {
    region: MemRegion,
    ram_frames: u64,
    pool_frames: u64,
    gfn_to_mfn: Box<[u64]>,
    mfn_to_gfn: Box<[u64]>,
}

impl GuestMemory {
    /// Maps the region and draws the frame map.
    pub fn new(cfg: MemConfig) -> Result<Self, MemError> {
        if cfg.ram_bytes == 0 || cfg.ram_bytes % PAGE != 0 {
            return Err(MemError::BadSize(cfg.ram_bytes as usize));
        }
        if cfg.pool_pages == 0 {
            return Err(MemError::BadSize(0));
        }
        let ram_frames = cfg.ram_bytes / PAGE;
        let total = ram_frames
            .checked_add(cfg.pool_pages)
            .and_then(|f| f.checked_add(MONITOR_FRAMES))
            .and_then(|f| f.checked_mul(PAGE))
            .filter(|&b| b <= isize::MAX as u64)
            .ok_or(MemError::BadSize(usize::MAX))?;
        let region = MemRegion::new(total as usize)?;
        let mut map: Vec<u64> = (0..ram_frames).collect();
        if let FrameMap::Permuted { seed } = cfg.frame_map {
            let mut rng = Rng::new(seed);
            for i in (1..map.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                map.swap(i, j);
            }
        }
        let mut inv = vec![0u64; map.len()];
        for (gfn, &mfn) in map.iter().enumerate() {
            inv[mfn as usize] = gfn as u64;
        }
        Ok(GuestMemory {
            region,
            ram_frames,
            pool_frames: cfg.pool_pages,
            gfn_to_mfn: map.into_boxed_slice(),
            mfn_to_gfn: inv.into_boxed_slice(),
        })
    }

    /// The backing region, addressed by machine-physical address (offset = mpa).
    pub fn region(&self) -> &MemRegion {
        &self.region
    }

    /// Frames of guest RAM (gfns `0..ram_frames()`).
    pub fn ram_frames(&self) -> u64 {
        self.ram_frames
    }

    /// Bytes of guest RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_frames * PAGE
    }

    /// Machine-physical address of the first shadow-pool page.
    pub fn pool_base(&self) -> u64 {
        self.ram_frames * PAGE
    }

    /// Pages in the shadow pool.
    pub fn pool_frames(&self) -> u64 {
        self.pool_frames
    }

    /// Machine-physical address of pool page `index` (no check).
    pub fn pool_page_mpa(&self, index: u32) -> u64 {
        self.pool_base() + index as u64 * PAGE
    }

    /// The pool index of the page containing `mpa`, if it is in the pool.
    pub fn pool_index(&self, mpa: u64) -> Option<u32> {
        let off = mpa.checked_sub(self.pool_base())?;
        let idx = off / PAGE;
        (idx < self.pool_frames).then_some(idx as u32)
    }

    /// Machine-physical address of the first monitor frame.
    pub fn monitor_mpa(&self) -> u64 {
        (self.ram_frames + self.pool_frames) * PAGE
    }

    /// Whether `mpa` lies in the monitor area.
    pub fn is_monitor_mpa(&self, mpa: u64) -> bool {
        mpa.checked_sub(self.monitor_mpa())
            .is_some_and(|off| off < MONITOR_FRAMES * PAGE)
    }

    /// The backing frame of guest frame `gfn`, or `None` outside guest RAM (this includes
    /// every gfn that numerically lies in the pool or on the monitor page).
    #[inline]
    pub fn gfn_to_mfn(&self, gfn: u64) -> Option<u64> {
        self.gfn_to_mfn.get(usize::try_from(gfn).ok()?).copied()
    }

    /// The guest frame backed by `mfn`, or `None` if `mfn` is not a RAM backing frame.
    #[inline]
    pub fn mfn_to_gfn(&self, mfn: u64) -> Option<u64> {
        self.mfn_to_gfn.get(usize::try_from(mfn).ok()?).copied()
    }

    /// The machine-physical address of guest-physical `gpa`, or `None` outside guest RAM.
    #[inline]
    pub fn gpa_to_mpa(&self, gpa: u64) -> Option<u64> {
        Some(self.gfn_to_mfn(gpa / PAGE)? * PAGE + gpa % PAGE)
    }

    /// Whether the gfn → mfn map is the identity.
    pub fn is_identity(&self) -> bool {
        self.gfn_to_mfn
            .iter()
            .enumerate()
            .all(|(g, &m)| g as u64 == m)
    }

    #[inline]
    fn ram(&self, gpa: u64) -> Result<u64, MemError> {
        self.gpa_to_mpa(gpa).ok_or(MemError::NotGuestRam(gpa))
    }

    /// Atomic 8-byte load of guest-physical `gpa`.
    #[inline]
    pub fn read_gpa_u64(&self, gpa: u64, order: Ordering) -> Result<u64, MemError> {
        self.region.load_u64(self.ram(gpa)?, order)
    }

    /// Atomic 8-byte store to guest-physical `gpa`.
    #[inline]
    pub fn write_gpa_u64(&self, gpa: u64, value: u64, order: Ordering) -> Result<(), MemError> {
        self.region.store_u64(self.ram(gpa)?, value, order)
    }

    /// Atomic compare-and-exchange at guest-physical `gpa` (see [`MemRegion::cmpxchg_u64`]).
    #[inline]
    pub fn cmpxchg_gpa_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
        order: Ordering,
    ) -> Result<Result<u64, u64>, MemError> {
        let fail = match order {
            Ordering::AcqRel | Ordering::Release => Ordering::Acquire,
            Ordering::SeqCst => Ordering::SeqCst,
            _ => Ordering::Relaxed,
        };
        self.region
            .cmpxchg_u64(self.ram(gpa)?, current, new, order, fail)
    }

    /// Copies guest-physical bytes out, page by page through the frame map.
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < buf.len() {
            let g = gpa
                .checked_add(done as u64)
                .ok_or(MemError::NotGuestRam(gpa))?;
            let n = ((PAGE - g % PAGE) as usize).min(buf.len() - done);
            self.region
                .read_bytes(self.ram(g)?, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Copies bytes into guest-physical memory, page by page through the frame map. On an
    /// error nothing past the first non-RAM page is written.
    pub fn write_gpa(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        // Check every page first so that a write straddling the end of RAM is refused whole.
        let mut off = 0usize;
        while off < data.len() {
            let g = gpa
                .checked_add(off as u64)
                .ok_or(MemError::NotGuestRam(gpa))?;
            self.ram(g)?;
            off += ((PAGE - g % PAGE) as usize).min(data.len() - off);
        }
        let mut done = 0usize;
        while done < data.len() {
            let g = gpa + done as u64;
            let n = ((PAGE - g % PAGE) as usize).min(data.len() - done);
            self.region
                .write_bytes(self.ram(g)?, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(frame_map: FrameMap) -> GuestMemory {
        GuestMemory::new(MemConfig {
            ram_bytes: 64 * PAGE,
            pool_pages: 8,
            frame_map,
        })
        .unwrap()
    }

    #[test]
    fn layout_places_pool_and_monitor_after_ram() {
        let m = mem(FrameMap::Permuted { seed: 1 });
        assert_eq!(m.ram_frames(), 64);
        assert_eq!(m.pool_base(), 64 * PAGE);
        assert_eq!(m.monitor_mpa(), 72 * PAGE);
        assert_eq!(m.region().len() as u64, (72 + MONITOR_FRAMES) * PAGE);
        assert!(m.is_monitor_mpa(m.monitor_mpa() + 8));
        assert!(!m.is_monitor_mpa(m.monitor_mpa() - 8));
        assert_eq!(m.pool_index(m.pool_page_mpa(3) + 17), Some(3));
        assert_eq!(m.pool_index(m.monitor_mpa()), None);
        assert_eq!(m.pool_index(0), None);
    }

    #[test]
    fn permuted_map_is_a_bijection_and_not_the_identity() {
        let m = mem(FrameMap::Permuted { seed: 7 });
        assert!(!m.is_identity());
        let mut seen = [false; 64];
        for gfn in 0..64 {
            let mfn = m.gfn_to_mfn(gfn).unwrap();
            assert!(mfn < 64);
            assert!(!seen[mfn as usize]);
            seen[mfn as usize] = true;
            assert_eq!(m.mfn_to_gfn(mfn), Some(gfn));
        }
        // Same seed, same map; different seed, different map.
        let again = mem(FrameMap::Permuted { seed: 7 });
        let other = mem(FrameMap::Permuted { seed: 8 });
        assert!((0..64).all(|g| m.gfn_to_mfn(g) == again.gfn_to_mfn(g)));
        assert!((0..64).any(|g| m.gfn_to_mfn(g) != other.gfn_to_mfn(g)));
    }

    #[test]
    fn identity_map_is_the_identity() {
        let m = mem(FrameMap::Identity);
        assert!(m.is_identity());
        assert_eq!(m.gpa_to_mpa(5 * PAGE + 8), Some(5 * PAGE + 8));
    }

    #[test]
    fn gfns_outside_ram_do_not_translate() {
        let m = mem(FrameMap::Permuted { seed: 3 });
        // The pool, the monitor page and anything beyond are not guest RAM.
        assert_eq!(m.gfn_to_mfn(64), None);
        assert_eq!(m.gpa_to_mpa(m.pool_base()), None);
        assert_eq!(m.gpa_to_mpa(m.monitor_mpa()), None);
        assert_eq!(m.gfn_to_mfn(u64::MAX), None);
        assert_eq!(m.mfn_to_gfn(64), None);
        let r = Ordering::Relaxed;
        assert!(matches!(
            m.read_gpa_u64(m.pool_base(), r),
            Err(MemError::NotGuestRam(_))
        ));
        assert!(matches!(
            m.write_gpa_u64(u64::MAX - 7, 1, r),
            Err(MemError::NotGuestRam(_))
        ));
        assert!(matches!(
            m.write_gpa(64 * PAGE - 2, &[1, 2, 3, 4]),
            Err(MemError::NotGuestRam(_))
        ));
        // The refused straddling write left the last RAM bytes alone.
        let mut b = [9u8; 2];
        m.read_gpa(64 * PAGE - 2, &mut b).unwrap();
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn gpa_accesses_go_through_the_frame_map() {
        let m = mem(FrameMap::Permuted { seed: 11 });
        let r = Ordering::Relaxed;
        m.write_gpa_u64(9 * PAGE + 16, 0x1234, r).unwrap();
        let mpa = m.gpa_to_mpa(9 * PAGE + 16).unwrap();
        assert_eq!(m.region().load_u64(mpa, r).unwrap(), 0x1234);
        assert_eq!(
            m.cmpxchg_gpa_u64(9 * PAGE + 16, 0x1234, 5, Ordering::AcqRel)
                .unwrap(),
            Ok(0x1234)
        );
        // A byte copy spanning two guest pages lands in two unrelated backing frames.
        m.write_gpa(3 * PAGE - 4, b"abcdefgh").unwrap();
        let mut buf = [0u8; 8];
        m.read_gpa(3 * PAGE - 4, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh");
        let mut tail = [0u8; 4];
        m.region()
            .read_bytes(m.gpa_to_mpa(3 * PAGE).unwrap(), &mut tail)
            .unwrap();
        assert_eq!(&tail, b"efgh");
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = |ram_bytes, pool_pages| {
            GuestMemory::new(MemConfig {
                ram_bytes,
                pool_pages,
                frame_map: FrameMap::Identity,
            })
            .is_err()
        };
        assert!(bad(0, 1));
        assert!(bad(100, 1));
        assert!(bad(PAGE, 0));
        assert!(bad(!(PAGE - 1), 1));
    }
}
