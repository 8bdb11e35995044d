//! The KVM capabilities the framework relies on or reports.

use kvm_bindings as kb;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One capability, as KVM_CHECK_EXTENSION answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapInfo {
    /// `KVM_CAP_*` name without the prefix.
    pub name: Cow<'static, str>,
    /// KVM_CHECK_EXTENSION's answer (0: absent; some capabilities answer a number).
    pub value: i32,
    /// The backends cannot run without it.
    pub required: bool,
    /// What the framework uses it for.
    pub why: Cow<'static, str>,
}

/// (name, number, required, why).
pub const CAPS: [(&str, u32, bool, &str); 12] = [
    (
        "USER_MEMORY",
        kb::KVM_CAP_USER_MEMORY,
        true,
        "memslots for guest RAM, monitor and pool",
    ),
    (
        "IMMEDIATE_EXIT",
        kb::KVM_CAP_IMMEDIATE_EXIT,
        true,
        "kicks without a race",
    ),
    (
        "EXT_CPUID",
        kb::KVM_CAP_EXT_CPUID,
        true,
        "KVM_GET_SUPPORTED_CPUID",
    ),
    (
        "NR_VCPUS",
        kb::KVM_CAP_NR_VCPUS,
        false,
        "recommended vCPU count",
    ),
    ("MAX_VCPUS", kb::KVM_CAP_MAX_VCPUS, false, "vCPU limit"),
    (
        "BINARY_STATS_FD",
        kb::KVM_CAP_BINARY_STATS_FD,
        false,
        "KVM's MMU statistics in results",
    ),
    ("XCRS", kb::KVM_CAP_XCRS, false, "XCR0 for SSE state"),
    (
        "SET_GUEST_DEBUG",
        kb::KVM_CAP_SET_GUEST_DEBUG,
        false,
        "debugging guests",
    ),
    (
        "X86_USER_SPACE_MSR",
        kb::KVM_CAP_X86_USER_SPACE_MSR,
        false,
        "MSR exits (unused)",
    ),
    (
        "SYNC_REGS",
        kb::KVM_CAP_SYNC_REGS,
        false,
        "registers without an ioctl per exit",
    ),
    (
        "NESTED_STATE",
        kb::KVM_CAP_NESTED_STATE,
        false,
        "reported only",
    ),
    (
        "PMU_CAPABILITY",
        kb::KVM_CAP_PMU_CAPABILITY,
        false,
        "guest PMU (reported only)",
    ),
];

/// Queries every capability in [`CAPS`].
pub fn query(kvm: &kvm_ioctls::Kvm) -> Vec<CapInfo> {
    CAPS.iter()
        .map(|&(name, nr, required, why)| CapInfo {
            name: Cow::Borrowed(name),
            value: kvm.check_extension_raw(libc::c_ulong::from(nr)),
            required,
            why: Cow::Borrowed(why),
        })
        .collect()
}
