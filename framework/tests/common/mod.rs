//! Shared helpers of the KVM integration tests.

/// Returns `true` if /dev/kvm is usable. Otherwise prints ONE loud line to stderr and returns
/// `false`; the test must then return at once (it is skipped, loudly, never silently passed).
pub fn kvm_available(test: &str) -> bool {
    match shadowlab_framework::kvm::kvm_unavailable_reason() {
        None => true,
        Some(reason) => {
            eprintln!("SKIPPED: /dev/kvm not available: {reason} (test {test})");
            false
        }
    }
}

/// Skips the calling test (see [`kvm_available`]) when /dev/kvm is unusable.
#[macro_export]
macro_rules! require_kvm {
    ($name:expr) => {
        if !common::kvm_available($name) {
            return;
        }
    };
}
