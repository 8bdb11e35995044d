//! How the KVM backend uses [`MemRegion`] (the framework's guest-memory region, `crate::mem`):
//! a memslot's backing, accessed only through its bounds-checked volatile/atomic methods (and
//! as guest RAM through [`crate::mem::GuestPhys`]).

use crate::mem::{MemError, MemRegion};

/// Maps a region of `size` bytes (a multiple of 4 KiB).
pub fn new_region(size: u64) -> Result<MemRegion, MemError> {
    let len = usize::try_from(size).map_err(|_| MemError::BadSize(usize::MAX))?;
    MemRegion::new(len)
}

/// The backend's accessors on a [`MemRegion`] (the 8-byte and fill accessors are those of
/// [`GuestPhys`](crate::mem::GuestPhys), which a region implements as identity-mapped guest RAM).
pub trait RegionExt {
    /// Size in bytes.
    fn size(&self) -> u64;
}

impl RegionExt for MemRegion {
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::GuestPhys;

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
