//! Cross-vCPU coordination on the shared page ([`Cpu::shared_page`]), reached through the direct
//! map: a counting barrier and a spin-wait, built from `fetch_add_u64`, acquire loads and
//! `pause`.

use crate::cpu::Cpu;
use crate::error::WorkloadError;
use shadowlab_abi::layout::direct_map;

/// How many times a wait may spin (each spin a `pause`) before it gives up with
/// [`WorkloadError::Timeout`]: far more than any correct run waits (about a minute of `pause`s
/// in a guest), so a vCPU that died or never started cannot hang the others forever.
pub const SPIN_LIMIT: u64 = 1 << 32;

/// Word indices in the shared page. The page is zero when the workload starts.
pub mod word {
    /// The barrier's arrival counter.
    pub const BARRIER: u64 = 0;
    /// `unsync-race`: PTE batches published by the writer vCPUs, in total. `relink-race`:
    /// rounds the children have finished, in total.
    pub const DONE: u64 = 1;
    /// `unsync-race`: guest-physical address of the shared leaf table, published by vCPU 0.
    pub const TABLE: u64 = 2;
    /// Non-zero once some vCPU has failed: every wait gives up with
    /// [`WorkloadError::PeerFailed`] instead of spinning until [`SPIN_LIMIT`].
    pub const ABORT: u64 = 3;
    /// `relink-race`: the last round whose new link vCPU 0 has published.
    pub const LINK: u64 = 4;
    /// `relink-race`: children about to fault through the round's link, in total.
    pub const GO: u64 = 5;
    /// `relink-race`: the last round whose table edit vCPU 0 has made and invalidated on itself.
    pub const EDIT: u64 = 6;
    /// `relink-race`: guest-physical address of the root the children run on.
    pub const ROOT: u64 = 7;
    /// `relink-race`: guest-physical address of vCPU 0's first data frame.
    pub const DATA: u64 = 8;
}

/// Direct-map address of word `w` of the shared page.
pub fn shared_word<C: Cpu>(cpu: &C, w: u64) -> u64 {
    direct_map(cpu.shared_page() + 8 * w)
}

/// Spins until the word at `gva` is at least `target`; returns the value seen. The load is an
/// acquire, so everything the vCPUs did before their increments is visible afterwards. Gives
/// up when another vCPU has [aborted](abort_peers).
pub fn spin_until_at_least<C: Cpu>(
    cpu: &mut C,
    gva: u64,
    target: u64,
    what: &'static str,
) -> Result<u64, WorkloadError> {
    let abort = shared_word(cpu, word::ABORT);
    for _ in 0..SPIN_LIMIT {
        let v = cpu.read_u64(gva);
        if v >= target {
            return Ok(v);
        }
        if cpu.read_u64(abort) != 0 {
            return Err(WorkloadError::PeerFailed);
        }
        cpu.pause();
    }
    Err(WorkloadError::Timeout { what })
}

/// Tells the other vCPUs this one has failed, so their waits end with
/// [`WorkloadError::PeerFailed`] rather than hanging.
pub fn abort_peers<C: Cpu>(cpu: &mut C) {
    let abort = shared_word(cpu, word::ABORT);
    cpu.fetch_add_u64(abort, 1);
}

/// A barrier for all `nr_vcpus()` vCPUs on one ever-increasing counter: the `k`-th wait of
/// every vCPU returns once the counter reaches `k * nr_vcpus`. Never reset, so no sense flag
/// and no reset race; each vCPU keeps its own generation.
#[derive(Debug)]
pub struct Barrier {
    gva: u64,
    generation: u64,
}

impl Barrier {
    /// The barrier on the shared page's [`word::BARRIER`].
    pub fn new<C: Cpu>(cpu: &C) -> Self {
        Barrier {
            gva: shared_word(cpu, word::BARRIER),
            generation: 0,
        }
    }

    /// Arrives and waits for every other vCPU to arrive.
    pub fn wait<C: Cpu>(&mut self, cpu: &mut C) -> Result<(), WorkloadError> {
        self.generation += 1;
        let n = cpu.nr_vcpus() as u64;
        cpu.fetch_add_u64(self.gva, 1);
        spin_until_at_least(
            cpu,
            self.gva,
            self.generation.saturating_mul(n),
            "the other vCPUs at a barrier",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mock::Machine;
    use core::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn barrier_separates_phases() {
        let m = Machine::new(4, 3);
        let phase_writes = AtomicU64::new(0);
        std::thread::scope(|s| {
            for id in 0..3 {
                let (m, phase_writes) = (&m, &phase_writes);
                s.spawn(move || {
                    let mut cpu = m.cpu(id);
                    let mut b = Barrier::new(&cpu);
                    for round in 0..50u64 {
                        phase_writes.fetch_add(1, Ordering::SeqCst);
                        b.wait(&mut cpu).unwrap();
                        // Everyone has arrived for this round, nobody has left it yet.
                        let seen = phase_writes.load(Ordering::SeqCst);
                        assert!(seen >= 3 * (round + 1) && seen <= 3 * (round + 2), "{seen}");
                        b.wait(&mut cpu).unwrap();
                    }
                });
            }
        });
    }
}
