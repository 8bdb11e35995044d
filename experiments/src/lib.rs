//! The parts of the `shadowlab` driver that its tests and other tools use as a library.

pub mod callgrind;
pub mod callgrind_record;
pub mod worker_build;
