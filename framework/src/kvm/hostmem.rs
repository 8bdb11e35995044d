//! Host memory that backs a KVM memslot: an anonymous mapping accessed only through
//! bounds-checked volatile reads and writes, never through Rust references (the guest writes it
//! concurrently).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// An out-of-bounds or misaligned access.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{what} of {len} bytes at offset {offset:#x} outside a {size:#x}-byte region")]
pub struct MemError {
    /// What was attempted.
    pub what: &'static str,
    /// Offset into the region.
    pub offset: u64,
    /// Access length.
    pub len: u64,
    /// Region size.
    pub size: u64,
}

/// An anonymous, page-aligned, zero-filled host mapping.
pub struct HostMapping {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all access goes through volatile or
// atomic operations on raw pointers, so sharing it between threads is sound.
unsafe impl Send for HostMapping {}
// SAFETY: as above: no `&`/`&mut` into the memory is ever created.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `size` bytes (a multiple of 4 KiB).
    pub fn new(size: u64) -> Result<Self, io::Error> {
        if size == 0 || size % 4096 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "size must be a non-zero multiple of 4096",
            ));
        }
        let len =
            usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
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
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { base, size: len })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Host address of the start, for KVM_SET_USER_MEMORY_REGION.
    pub fn host_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn check(
        &self,
        what: &'static str,
        offset: u64,
        len: u64,
        align: u64,
    ) -> Result<*mut u8, MemError> {
        let err = MemError {
            what,
            offset,
            len,
            size: self.size as u64,
        };
        let end = offset.checked_add(len).ok_or(err.clone())?;
        if end > self.size as u64 || offset % align != 0 {
            return Err(err);
        }
        // SAFETY: offset + len <= size, so the pointer stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset as usize) })
    }

    fn atomic_u64(&self, what: &'static str, offset: u64) -> Result<&AtomicU64, MemError> {
        let p = self.check(what, offset, 8, 8)?;
        // SAFETY: in bounds and 8-aligned (checked); AtomicU64 has the layout of u64 and atomic
        // access is sound under concurrent guest access. The reference lives no longer than
        // `self`, i.e. the mapping.
        Ok(unsafe { &*p.cast::<AtomicU64>() })
    }

    /// Loads the aligned u64 at `offset` (acquire).
    pub fn read_u64(&self, offset: u64) -> Result<u64, MemError> {
        Ok(self.atomic_u64("read_u64", offset)?.load(Ordering::Acquire))
    }

    /// Stores the aligned u64 at `offset` (release).
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<(), MemError> {
        self.atomic_u64("write_u64", offset)?
            .store(value, Ordering::Release);
        Ok(())
    }

    /// Copies bytes out of the region.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let p = self.check("read_bytes", offset, buf.len() as u64, 1)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: p + i is inside the checked range.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies bytes into the region.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), MemError> {
        let p = self.check("write_bytes", offset, data.len() as u64, 1)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: p + i is inside the checked range.
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Zero-fills a range.
    pub fn fill_zero(&self, offset: u64, len: u64) -> Result<(), MemError> {
        let p = self.check("fill_zero", offset, len, 1)?;
        // SAFETY: the range is inside the mapping (checked); no Rust reference aliases it.
        unsafe { std::ptr::write_bytes(p, 0, len as usize) };
        Ok(())
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: base/size are exactly what mmap returned; KVM memslots referring to it are
        // torn down with the VM fd, which the VM struct drops first (field order).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
    }
}

impl std::fmt::Debug for HostMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostMapping({:#x} bytes)", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let m = HostMapping::new(8192).unwrap();
        m.write_u64(8184, 7).unwrap();
        assert_eq!(m.read_u64(8184).unwrap(), 7);
        assert!(m.read_u64(8192).is_err());
        assert!(m.read_u64(4).is_err(), "misaligned");
        assert!(
            m.write_bytes(u64::MAX - 2, &[1, 2, 3, 4]).is_err(),
            "overflowing offset"
        );
        let mut b = [0u8; 4];
        assert!(m.read_bytes(8190, &mut b).is_err());
        m.write_bytes(100, &[1, 2, 3, 4]).unwrap();
        m.read_bytes(100, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(HostMapping::new(100).is_err());
    }
}
