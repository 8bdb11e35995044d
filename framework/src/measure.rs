//! The measured region, marked in the binary so that tools outside the process can find it.
//!
//! Every backend's vCPU thread runs its workload inside [`shadowlab_measured_region`], an
//! `#[inline(never)]` function with a name found nowhere else. Callgrind collects only inside
//! it (`valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*shadowlab_measured_region*'`), so the instruction count it reports is the
//! workload's alone: not the VM's set-up (guest RAM, the frame permutation, boot tables), not
//! the perf-counter reads around it, not the JSON.
//!
//! The sim backend calls it in `sim::run_with_options`, inside the perf-counter bracket. The
//! kvm backend's vCPU thread should wrap its run loop (from the first `KVM_RUN` to the guest's
//! DONE) in it the same way.

/// The symbol's name: the pattern for callgrind's `--toggle-collect` is `*` + this + `*`
/// (the function is generic, so each instance's mangled name contains it).
pub const MEASURED_REGION_SYMBOL: &str = "shadowlab_measured_region";

/// Runs `f`: the measured region. Never inlined, so that it is one function in the binary
/// with a unique name; it adds one call and return around `f`, nothing else.
#[inline(never)]
pub fn shadowlab_measured_region<R>(f: impl FnOnce() -> R) -> R {
    // black_box: the region's boundary is a real call, and `f`'s result is produced inside it.
    std::hint::black_box(f())
}
