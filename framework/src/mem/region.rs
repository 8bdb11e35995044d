//! [`MemRegion`]: one anonymous `mmap` of host memory that backs guest memory.
//!
//! Guest memory is shared with code the VMM does not control (the guest on `kvm`, other
//! software vCPUs on `sim`), so the VMM never forms a Rust reference (`&[u8]`, `&u64`) into it:
//! every access goes through a bounds- and alignment-checked method that performs one volatile
//! or atomic operation and returns a [`MemError`] for a bad offset. A guest that writes garbage
//! can make the VMM read garbage, never touch memory outside the region.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in one page.
pub const PAGE_SIZE: usize = 4096;

/// Why an access to a [`MemRegion`] (or to guest memory through it) was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// `mmap` failed.
    #[error("mmap of {len} bytes of guest memory failed: {source}")]
    Mmap {
        /// Requested length.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The requested region size is zero or not a multiple of the page size.
    #[error("guest memory region size {0:#x} is zero or not a multiple of 4 KiB")]
    BadSize(usize),
    /// The access does not fit inside the region.
    #[error("access of {len} bytes at offset {offset:#x} is outside the {size:#x}-byte region")]
    OutOfBounds {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// An 8-byte atomic access at an offset that is not 8-byte aligned.
    #[error("8-byte access at offset {0:#x} is not 8-byte aligned")]
    Misaligned(u64),
    /// A guest-physical address that is not guest RAM.
    #[error("guest-physical address {0:#x} is not guest RAM")]
    NotGuestRam(u64),
}

/// Errors compare by what they say: an OS error by its errno (or its kind, if it has none),
/// so that an MMU or hook error can be compared in the exit handler's tests.
impl PartialEq for MemError {
    fn eq(&self, other: &Self) -> bool {
        use MemError::*;
        match (self, other) {
            (Mmap { len: a, source: x }, Mmap { len: b, source: y }) => {
                a == b && x.raw_os_error() == y.raw_os_error() && x.kind() == y.kind()
            }
            (BadSize(a), BadSize(b)) => a == b,
            (
                OutOfBounds {
                    offset: a,
                    len: b,
                    size: c,
                },
                OutOfBounds {
                    offset: x,
                    len: y,
                    size: z,
                },
            ) => (a, b, c) == (x, y, z),
            (Misaligned(a), Misaligned(b)) => a == b,
            (NotGuestRam(a), NotGuestRam(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for MemError {}

/// An anonymous, page-aligned, zero-filled mapping of host memory, unmapped on drop.
///
/// Its host address and length are what the KVM backend registers as a memslot
/// ([`MemRegion::host_addr`], [`MemRegion::len`]); the simulated backend reads and writes it
/// through the same methods.
#[derive(Debug)]
pub struct MemRegion {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; every access through `&self` is a
// volatile or atomic operation on a checked offset, so sharing it between threads creates no
// data race in the Rust sense (concurrent non-atomic guest accesses are the guest's business,
// and the VMM never holds a reference into the mapping).
unsafe impl Send for MemRegion {}
// SAFETY: see `Send` above.
unsafe impl Sync for MemRegion {}

impl MemRegion {
    /// Maps `len` bytes (a non-zero multiple of [`PAGE_SIZE`]) of zeroed anonymous memory.
    /// `MAP_NORESERVE`: untouched guest frames cost nothing.
    pub fn new(len: usize) -> Result<Self, MemError> {
        if len == 0 || len % PAGE_SIZE != 0 {
            return Err(MemError::BadSize(len));
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no
        // existing memory is affected. The result is checked against MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::Mmap {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or(MemError::Mmap {
            len,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(MemRegion { base, len })
    }

    /// Host virtual address of the first byte (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a region has at least one page); present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks `offset..offset+len` against the region and returns a pointer to `offset`.
    #[inline]
    fn ptr(&self, offset: u64, len: usize) -> Result<*mut u8, MemError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len as u64 => {
                // SAFETY: offset + len <= self.len, so the result stays inside the mapping.
                Ok(unsafe { self.base.as_ptr().add(offset as usize) })
            }
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Checks an 8-byte aligned access and returns the atomic at `offset`.
    #[inline]
    fn atomic(&self, offset: u64) -> Result<&AtomicU64, MemError> {
        if offset % 8 != 0 {
            return Err(MemError::Misaligned(offset));
        }
        let p = self.ptr(offset, 8)?;
        // SAFETY: `p` is in bounds, 8-byte aligned (the mapping is page aligned), and valid
        // for the life of `self`. The `&AtomicU64` is a short-lived handle used for one atomic
        // operation by the caller; all accesses to guest memory from the VMM are atomic or
        // volatile, and `AtomicU64` has interior mutability, so no `&`-aliasing rule is broken.
        Ok(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// Atomic 8-byte load.
    #[inline]
    pub fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, MemError> {
        Ok(self.atomic(offset)?.load(order))
    }

    /// Atomic 8-byte store.
    #[inline]
    pub fn store_u64(&self, offset: u64, value: u64, order: Ordering) -> Result<(), MemError> {
        self.atomic(offset)?.store(value, order);
        Ok(())
    }

    /// Atomic compare-and-exchange; `Ok(Ok(old))` on success, `Ok(Err(found))` on a mismatch.
    #[inline]
    pub fn cmpxchg_u64(
        &self,
        offset: u64,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Result<u64, u64>, MemError> {
        Ok(self
            .atomic(offset)?
            .compare_exchange(current, new, success, failure))
    }

    /// Atomic OR; returns the old value.
    #[inline]
    pub fn fetch_or_u64(&self, offset: u64, bits: u64, order: Ordering) -> Result<u64, MemError> {
        Ok(self.atomic(offset)?.fetch_or(bits, order))
    }

    /// Atomic AND; returns the old value.
    #[inline]
    pub fn fetch_and_u64(&self, offset: u64, bits: u64, order: Ordering) -> Result<u64, MemError> {
        Ok(self.atomic(offset)?.fetch_and(bits, order))
    }

    /// Atomic wrapping add; returns the old value.
    #[inline]
    pub fn fetch_add_u64(&self, offset: u64, v: u64, order: Ordering) -> Result<u64, MemError> {
        Ok(self.atomic(offset)?.fetch_add(v, order))
    }

    /// Atomic exchange; returns the old value.
    #[inline]
    pub fn swap_u64(&self, offset: u64, v: u64, order: Ordering) -> Result<u64, MemError> {
        Ok(self.atomic(offset)?.swap(v, order))
    }

    /// Copies `buf.len()` bytes out of the region with volatile byte loads.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let p = self.ptr(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `p..p+buf.len()` was bounds-checked above; a volatile read of a u8 has no
            // alignment requirement.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `data` into the region with volatile byte stores.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), MemError> {
        let p = self.ptr(offset, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: bounds-checked above; see `read_bytes`.
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Zeroes `len` bytes (8-byte aligned offset and length) with relaxed atomic stores, e.g. a
    /// shadow page before reuse.
    pub fn zero(&self, offset: u64, len: usize) -> Result<(), MemError> {
        if offset % 8 != 0 || len % 8 != 0 {
            return Err(MemError::Misaligned(offset | len as u64));
        }
        self.ptr(offset, len)?;
        for o in (offset..offset + len as u64).step_by(8) {
            self.store_u64(o, 0, Ordering::Relaxed)?;
        }
        Ok(())
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned; no reference into the mapping
        // can outlive `self` (none is ever handed out).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_bad_sizes() {
        assert!(matches!(MemRegion::new(0), Err(MemError::BadSize(0))));
        assert!(matches!(MemRegion::new(100), Err(MemError::BadSize(100))));
    }

    #[test]
    fn atomics_round_trip_and_start_zeroed() {
        let r = MemRegion::new(2 * PAGE_SIZE).unwrap();
        assert_eq!(r.len(), 8192);
        assert!(!r.is_empty());
        assert_eq!(r.host_addr() % PAGE_SIZE as u64, 0);
        assert_eq!(r.load_u64(4096, Ordering::Relaxed).unwrap(), 0);
        r.store_u64(8, 0xdead_beef, Ordering::Release).unwrap();
        assert_eq!(r.load_u64(8, Ordering::Acquire).unwrap(), 0xdead_beef);
        assert_eq!(
            r.fetch_or_u64(8, 1 << 40, Ordering::Relaxed).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            r.fetch_and_u64(8, !0xf, Ordering::Relaxed).unwrap(),
            0xdead_beef | 1 << 40
        );
        assert_eq!(
            r.fetch_add_u64(8, 1, Ordering::SeqCst).unwrap(),
            0xdead_bee0 | 1 << 40
        );
        assert_eq!(
            r.swap_u64(8, 7, Ordering::SeqCst).unwrap(),
            0xdead_bee1 | 1 << 40
        );
        let rel = Ordering::Relaxed;
        assert_eq!(r.cmpxchg_u64(8, 7, 9, rel, rel).unwrap(), Ok(7));
        assert_eq!(r.cmpxchg_u64(8, 7, 11, rel, rel).unwrap(), Err(9));
        r.zero(0, 16).unwrap();
        assert_eq!(r.load_u64(8, rel).unwrap(), 0);
    }

    #[test]
    fn bytes_round_trip_across_a_page_boundary() {
        let r = MemRegion::new(2 * PAGE_SIZE).unwrap();
        r.write_bytes(4090, b"shadowlab!").unwrap();
        let mut buf = [0u8; 10];
        r.read_bytes(4090, &mut buf).unwrap();
        assert_eq!(&buf, b"shadowlab!");
        // Little-endian view through the atomic path.
        assert_eq!(
            r.load_u64(4096, Ordering::Relaxed).unwrap() & 0xffff,
            u64::from_le_bytes([b'l', b'a', b'b', b'!', 0, 0, 0, 0]) & 0xffff
        );
    }

    #[test]
    fn out_of_bounds_and_misaligned_accesses_are_errors() {
        let r = MemRegion::new(PAGE_SIZE).unwrap();
        let rel = Ordering::Relaxed;
        assert!(matches!(
            r.load_u64(4096, rel),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.load_u64(4092, rel),
            Err(MemError::Misaligned(4092))
        ));
        assert!(matches!(
            r.store_u64(u64::MAX - 7, 0, rel),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.fetch_or_u64(3, 1, rel),
            Err(MemError::Misaligned(3))
        ));
        let mut big = [0u8; 2];
        assert!(matches!(
            r.read_bytes(4095, &mut big),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.write_bytes(u64::MAX, &[1]),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(r.zero(4088, 16).is_err());
        assert!(r.zero(4, 8).is_err());
        // Nothing in bounds was touched by the refused accesses.
        assert_eq!(r.load_u64(4088, rel).unwrap(), 0);
    }
}
