//! The paravirtual guest's ELF, built by `framework/build.rs` from `framework/guest` during the
//! normal `cargo build` and embedded here.

/// The guest image (an x86-64 ELF64 executable linked in the direct map).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("SHADOWLAB_GUEST_ELF"));
