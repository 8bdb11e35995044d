//! shadowlab's VMM core: guest memory (`mem`), the shadow MMU (`mmu`), the backends that run
//! guests on it (`sim`), and the build's shadow-sync policy.

pub mod mem;
pub mod mmu;
pub mod policy;
pub mod rng;
pub mod sim;
pub mod worker;

pub use policy::{BuildPolicy, BUILD_POLICY};
