//! [`GuestPhys`]: guest-physical memory as the VMM's exit handling sees it, implemented once
//! per memory type.
//!
//! - [`MemRegion`]: guest RAM at guest-physical 0 with gfn == backing frame (the KVM
//!   `native` backend, and tests): offset = gpa.
//! - [`GuestMemory`]: guest RAM behind the shadow MMU's gfn -> backing-frame map (the KVM
//!   `kvm` backend).
//!
//! Both fix the orderings the backends use: acquire loads, release stores.

use std::sync::atomic::Ordering;

use super::{GuestMemory, MemError, MemRegion};

/// Guest-physical memory as the exit handler sees it. `native` reads guest RAM directly
/// (gfn == backing frame); the `kvm` backend translates through its frame map.
pub trait GuestPhys {
    /// Bytes of guest RAM (`0..ram_size` is valid).
    fn ram_size(&self) -> u64;
    /// Copies `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Loads an aligned u64 at `gpa` (acquire).
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError>;
    /// Stores an aligned u64 at `gpa` (release).
    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemError>;
    /// Copies bytes to `gpa`.
    fn write_bytes(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Zero-fills `len` bytes at `gpa`.
    fn fill_zero(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        const CHUNK: [u8; 4096] = [0; 4096];
        let mut at = gpa;
        let end = gpa.checked_add(len).ok_or(MemError::NotGuestRam(gpa))?;
        while at < end {
            let n = (end - at).min(CHUNK.len() as u64);
            self.write_bytes(at, &CHUNK[..n as usize])?;
            at += n;
        }
        Ok(())
    }
}

/// Guest RAM with gfn == backing frame (`native`: offset = gpa).
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

/// Guest RAM behind the shadow MMU's frame map (`kvm`): guest-physical addresses are
/// translated gfn -> backing frame.
impl GuestPhys for GuestMemory {
    fn ram_size(&self) -> u64 {
        self.ram_bytes()
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_gpa(gpa, buf)
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        self.read_gpa_u64(gpa, Ordering::Acquire)
    }
    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemError> {
        self.write_gpa_u64(gpa, value, Ordering::Release)
    }
    fn write_bytes(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.write_gpa(gpa, data)
    }
}
