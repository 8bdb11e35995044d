//! shadowlab's VMM core: guest memory (`mem`), the shadow MMU (`mmu`), the backends that run
//! guests on it (`kvm`/`native` on /dev/kvm, `sim`), and the build's shadow-sync policy.
//! (Host detection is the `shadowlab-host` crate.)

pub mod kvm;
pub mod layout;
pub mod measure;
pub mod mem;
pub mod mmu;
pub mod perf;
pub mod pin;
pub mod policy;
pub mod sim;
pub mod worker;

pub use policy::{BuildPolicy, BUILD_POLICY};
