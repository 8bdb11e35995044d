//! Why a memslot could not be set: the one error of `Vm`'s memslot changes, below the error
//! types that carry it (the run's [`super::error::KvmError`], the MMU hooks' `HookError`).

/// A memslot change that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemslotError {
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}, gpa {gpa:#x}, {size:#x} bytes): {source}")]
    SetUserMemoryRegion {
        /// The memslot.
        slot: u32,
        /// Its guest-physical base.
        gpa: u64,
        /// Its size.
        size: u64,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The pool's memslot was to be cycled in a VM that has no shadow pool (`native`).
    #[error("no shadow pool in a native VM")]
    NoShadowPool,
}
