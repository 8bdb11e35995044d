//! Hostile guest page tables against the shadow MMU on `sim` (see `framework/fuzz/README.md`
//! and the harness, shared with the regression tests in `framework/tests/hostile_guest.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/hostile_guest/harness.rs"]
mod harness;

fuzz_target!(|input: harness::Input| {
    if let Err(finding) = harness::run(&input) {
        panic!("{finding}");
    }
});
