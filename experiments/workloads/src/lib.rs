//! The workloads, written once against the [`Cpu`] trait: linked into the paravirtual guest for
//! the `kvm` and `native` backends, called directly by the `sim` backend.
//!
//! `no_std` and free of host-side code: the guest links it.
#![no_std]

pub mod cpu;
pub mod layout;

pub use cpu::Cpu;
