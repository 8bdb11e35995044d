//! How the KVM backend uses [`MemRegion`] (the framework's guest-memory region, `crate::mem`):
//! a memslot's backing, accessed only through its bounds-checked volatile/atomic methods.
//! Its [`GuestPhys`] implementation fixes the orderings the backend uses (acquire loads,
//! release stores) and treats offsets as guest-physical addresses (gfn == backing frame).

use std::sync::atomic::Ordering;

use super::ucall::GuestPhys;
use crate::mem::{MemError, MemRegion};

/// Maps a region of `size` bytes (a multiple of 4 KiB).
pub fn new_region(size: u64) -> Result<MemRegion, MemError> {
    let len = usize::try_from(size).map_err(|_| MemError::BadSize(usize::MAX))?;
    MemRegion::new(len)
}

/// The backend's accessors on a [`MemRegion`] (the 8-byte and fill accessors are those of
/// [`GuestPhys`], which a region implements as identity-mapped guest RAM).
pub trait RegionExt {
    /// Size in bytes.
    fn size(&self) -> u64;
}

impl RegionExt for MemRegion {
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

/// A region seen as guest RAM with gfn == backing frame (`native`: offset = gpa).
impl GuestPhys for MemRegion {
    fn ram_size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_bytes(gpa, buf)
    }
    fn read_u64(&self, offset: u64) -> Result<u64, MemError> {
        self.load_u64(offset, Ordering::Acquire)
    }
    fn write_u64(&self, offset: u64, value: u64) -> Result<(), MemError> {
        self.store_u64(offset, value, Ordering::Release)
    }
    fn write_bytes(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        MemRegion::write_bytes(self, gpa, data)
    }
    fn fill_zero(&self, offset: u64, len: u64) -> Result<(), MemError> {
        if offset % 8 == 0 && len % 8 == 0 {
            return self.zero(offset, len as usize);
        }
        const CHUNK: [u8; 4096] = [0; 4096];
        let mut at = offset;
        let end = offset.checked_add(len).ok_or(MemError::OutOfBounds {
            offset,
            len: len as usize,
            size: self.len(),
        })?;
        while at < end {
            let n = (end - at).min(CHUNK.len() as u64);
            MemRegion::write_bytes(self, at, &CHUNK[..n as usize])?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_are_bounds_checked() {
        let m = new_region(8192).unwrap();
        m.write_u64(8184, 7).unwrap();
        assert_eq!(m.read_u64(8184).unwrap(), 7);
        assert!(m.read_u64(8192).is_err());
        assert!(m.read_u64(4).is_err(), "misaligned");
        assert!(m.fill_zero(u64::MAX - 2, 4).is_err(), "overflowing offset");
        m.write_bytes(100, &[1, 2, 3, 4, 5]).unwrap();
        m.fill_zero(101, 3).unwrap();
        let mut b = [0u8; 5];
        m.read_bytes(100, &mut b).unwrap();
        assert_eq!(b, [1, 0, 0, 0, 5]);
        assert!(new_region(100).is_err());
    }
}
