//! shadowlab's VMM core: the shadow MMU (`mmu`), the backends that run guests on it, and the
//! build's shadow-sync policy.

pub mod host;
pub mod kvm;
pub mod policy;

pub use policy::{BuildPolicy, BUILD_POLICY};
