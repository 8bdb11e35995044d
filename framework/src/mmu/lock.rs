//! The MMU lock: a readers-writer lock, as KVM's `kvm->mmu_lock` (an rwlock on x86 since the
//! TDP MMU), that counts acquisitions and the time spent waiting for it.
//!
//! Who takes what (see also `mmu/mod.rs`):
//! - **write**: everything that changes shadow pages or SPTEs: the fault path, unsync,
//!   `mmu_sync_children`, emulated writes, zaps, root allocation and freeing, recycling. KVM's
//!   shadow MMU (as opposed to its TDP MMU) takes `mmu_lock` for write for all of these too.
//! - **read**: inspection that must see a consistent set of pages but changes nothing: the
//!   INVLPG pre-check ("is anything on this path unsync?"), the oracle's shadow walk, and
//!   [`crate::mmu::Mmu::audit`].
//! - **none**: `is_unsync_root` (the lockless check under study) and the fast CR3 switch to a
//!   cached root, as in KVM.
//!
//! Waiting is timed only when the lock is actually contended (a failed `try_*` first), so an
//! uncontended acquisition costs one extra relaxed increment.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::Instant;

/// A counting readers-writer lock around the MMU state.
#[derive(Debug, Default)]
pub struct MmuLock<T> {
    inner: RwLock<T>,
    reads: AtomicU64,
    writes: AtomicU64,
    read_contended: AtomicU64,
    write_contended: AtomicU64,
    read_wait_ns: AtomicU64,
    write_wait_ns: AtomicU64,
}

pub use shadowlab_schema::LockStats;

impl<T> MmuLock<T> {
    /// A lock around `value`.
    pub fn new(value: T) -> Self {
        MmuLock {
            inner: RwLock::new(value),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            read_contended: AtomicU64::new(0),
            write_contended: AtomicU64::new(0),
            read_wait_ns: AtomicU64::new(0),
            write_wait_ns: AtomicU64::new(0),
        }
    }

    /// `write_lock(&kvm->mmu_lock)`. A poisoned lock (a thread panicked holding it) is
    /// recovered rather than propagated: the MMU state is only changed through methods that
    /// keep it consistent at every store, and a VMM that panics on another thread's bug would
    /// turn one failure into two.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.writes.fetch_add(1, Relaxed);
        match self.inner.try_write() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let t0 = Instant::now();
                let g = self.inner.write().unwrap_or_else(|p| p.into_inner());
                self.write_contended.fetch_add(1, Relaxed);
                self.write_wait_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
                g
            }
        }
    }

    /// `read_lock(&kvm->mmu_lock)`.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.reads.fetch_add(1, Relaxed);
        match self.inner.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let t0 = Instant::now();
                let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
                self.read_contended.fetch_add(1, Relaxed);
                self.read_wait_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
                g
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> LockStats {
        LockStats {
            read_acquisitions: self.reads.load(Relaxed),
            write_acquisitions: self.writes.load(Relaxed),
            read_contended: self.read_contended.load(Relaxed),
            write_contended: self.write_contended.load(Relaxed),
            read_wait_ns: self.read_wait_ns.load(Relaxed),
            write_wait_ns: self.write_wait_ns.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn counts_acquisitions_and_contended_wait() {
        let l = Arc::new(MmuLock::new(0u32));
        {
            let _r1 = l.read();
            let _r2 = l.read();
        }
        *l.write() += 1;
        let s = l.stats();
        assert_eq!((s.read_acquisitions, s.write_acquisitions), (2, 1));
        assert_eq!((s.read_contended, s.write_contended), (0, 0));

        let g = l.write();
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || *l2.read());
        std::thread::sleep(Duration::from_millis(20));
        drop(g);
        assert_eq!(t.join().unwrap(), 1);
        let s = l.stats();
        assert_eq!(s.read_contended, 1);
        assert!(s.read_wait_ns >= 10_000_000, "waited {} ns", s.read_wait_ns);
    }
}
