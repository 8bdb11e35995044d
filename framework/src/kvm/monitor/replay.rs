//! The replay protocol between the VMM and the monitor's replay routine ([`super::code`]):
//! what one replayed store makes the host drop, and the per-vCPU data page the VMM fills and
//! the routine reads (see `kvm::shadow` for why a replay is needed).

use super::error::MonitorError;
use super::layout::{pool_va, REPLAY_CAPACITY, REPLAY_OFF};
use crate::mem::{GuestPhys, MemRegion};

/// Offset in a replay data page of the round word: the entry count plus one for a round to
/// run (a round of no entries only reloads CR3), 0 for no more rounds (the VMM writes it).
pub(super) const REPLAY_COUNT: u64 = 0;
/// Offset in a replay data page of the first entry.
pub(super) const REPLAY_ENTRIES: u64 = 8;
/// What one replayed store makes the host drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayEntry {
    /// Its shadow of the SPTE at this machine-physical address.
    Spte(u64),
    /// Every shadow page it has of the pool page containing this machine-physical address.
    Page(u64),
}

impl ReplayEntry {
    /// The byte the routine stores to, as a monitor VA, for a pool at `pool_base`.
    pub const fn va(self, pool_base: u64) -> u64 {
        match self {
            ReplayEntry::Spte(mpa) => pool_va(pool_base, mpa & !7),
            ReplayEntry::Page(mpa) => pool_va(pool_base, mpa & !0xfff) + 1,
        }
    }
}

/// Fills vCPU `vcpu`'s replay data page with `vas` (at most [`REPLAY_CAPACITY`] monitor VAs,
/// possibly none) and the round word, which the routine reads when it (re)starts.
pub fn write_replay(mon: &MemRegion, vcpu: usize, vas: &[u64]) -> Result<(), MonitorError> {
    if vas.len() > REPLAY_CAPACITY {
        return Err(MonitorError::ReplayTooLong(vas.len()));
    }
    let page = REPLAY_OFF + vcpu as u64 * 0x1000;
    let bytes: Vec<u8> = vas.iter().flat_map(|v| v.to_le_bytes()).collect();
    mon.write_bytes(page + REPLAY_ENTRIES, &bytes)?;
    mon.write_u64(page + REPLAY_COUNT, vas.len() as u64 + 1)?;
    Ok(())
}

/// After the routine's completion exit: nothing more, so it returns to the interrupted context
/// when the vCPU next runs.
pub fn finish_replay(mon: &MemRegion, vcpu: usize) -> Result<(), MonitorError> {
    mon.write_u64(REPLAY_OFF + vcpu as u64 * 0x1000 + REPLAY_COUNT, 0)?;
    Ok(())
}
