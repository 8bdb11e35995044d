//! The layout knob: padding bytes in the worker's `.text`, to vary the binary's code layout
//! without changing its code, for the layout-varied A/A control.
//!
//! `SHADOWLAB_LAYOUT_PAD=N cargo build ...` (see `framework/build.rs`) places `N` bytes of
//! `int3` in a `.text` section of the `shadowlab-vmm` binary crate, whose objects the linker
//! places ahead of this library's: every function of the library, the MMU's included, moves by
//! `N` bytes (rounded up to its alignment), and nothing else changes. Two builds of the same
//! policy with different `N` run the same instructions at different addresses: different
//! cache-set, branch-predictor and decoded-icache alignments. Their A/A ratio is the noise floor
//! that layout alone causes ("Producing wrong data without doing anything obviously wrong",
//! Mytkowicz et al., ASPLOS'09), which a same-binary A/A leaves out.
//!
//! The worker reports the pad in `--version` (`layout-pad: N`, measured between the padding's
//! symbols) and in every JSON result (`layout_pad`).

include!(concat!(env!("OUT_DIR"), "/layout_pad.rs"));
