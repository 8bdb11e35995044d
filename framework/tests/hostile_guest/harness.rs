//! The hostile-guest harness: one shadow MMU on `sim`, two vCPUs driven in turn on one thread
//! (deterministic), and a guest that writes whatever it likes into its page tables.
//!
//! Shared by the cargo-fuzz target (`framework/fuzz`, which derives `Arbitrary` for [`Input`]
//! under `cfg(fuzzing)`) and by the regression tests in `framework/tests/hostile_guest.rs`,
//! which replay op sequences written out by hand or found by the fuzzer.
//!
//! The guest has twelve table frames, six data frames, the boot tables (direct map and one
//! PML4 per vCPU) and raw entries: links to any table at any level (recursive and aliased
//! links included), reserved bits, PS, NX, addresses of the shadow pool, of the monitor and
//! beyond RAM. Its stores go through a vCPU (the direct map or any other mapping), as a
//! guest's do, so the MMU's write tracking sees them; a guest that breaks its direct map just
//! takes guest faults from then on.
//!
//! Checked, after every INVLPG (that address), flush and CR3 load (every probe address) of
//! the vCPU that invalidated:
//! - the shadow translation is the guest's reference walk's ([`check_translation`]), a read
//!   through the address returns what the guest's frame holds, or faults exactly when the
//!   guest's tables deny it;
//! - no shadow translation and no TLB entry reaches a shadow-pool page or the monitor, and the
//!   monitor's own slot (511) still maps exactly the monitor, supervisor-only, whatever the
//!   guest wrote into its PML4s;
//! - `Mmu::audit` holds.
//!
//! At any time: an access the guest's tables grant never faults, and no MMU call fails with a
//! VMM error (only guest faults and `BadCr3` for a CR3 outside RAM are the guest's doing).

use std::fmt;
use std::sync::atomic::Ordering;

use shadowlab_abi::layout::{direct_map, pte, MONITOR_SLOT, PAGE_SIZE};
use shadowlab_framework::mem::MONITOR_FRAMES;
use shadowlab_framework::mmu::spte::{ACC_USER, ACC_WRITE};
use shadowlab_framework::mmu::{check_translation, MmuError, ShadowMiss};
use shadowlab_framework::sim::{SimConfig, SimCpu, SimError, SimFault, SimVm};
use shadowlab_policies::{AcquireLoad, AlwaysLock, RmbFence, SeqCstFence, SyncPolicy};
use shadowlab_workloads::Cpu;

/// Guest RAM: 256 frames, so that boot tables are one PT, PD, PDPT and a PML4 per vCPU.
const RAM_BYTES: u64 = 1 << 20;
/// vCPUs (each pins a root and up to three cached ones).
const VCPUS: usize = 2;
/// The smallest pool the MMU accepts for two vCPUs (`Mmu::new`'s minimum).
const MIN_POOL: u64 = (VCPUS * 4 + 3) as u64;
/// Free frames the ops use as page tables.
pub const TABLES: usize = 12;
/// Free frames the ops map as data.
pub const DATA: usize = 6;
/// Ops run per input (the rest is ignored, so inputs stay fast).
pub const MAX_OPS: usize = 96;

/// Page-table indices of the probe addresses, level 4 and below. Level 4: two private slots,
/// the direct map (255) and the monitor's slot (511); below: the first entries (one aligned
/// prefetch group's worth at level 1) and the last.
const PROBE_L4: [u64; 4] = [1, 2, 255, MONITOR_SLOT as u64];
const PROBE_L3: [u64; 3] = [0, 1, 511];
const PROBE_L2: [u64; 3] = [0, 1, 511];
const PROBE_L1: [u64; 4] = [0, 1, 2, 511];
/// Number of probe addresses.
pub const PROBES: usize = PROBE_L4.len() * PROBE_L3.len() * PROBE_L2.len() * PROBE_L1.len();
/// Table slots the ops write: the probes' indices.
const SLOTS: [u64; 6] = [0, 1, 2, 3, 255, 511];

/// Probe address `i` (mod [`PROBES`]), canonical.
pub fn probe_gva(i: u8) -> u64 {
    let mut i = i as usize % PROBES;
    let mut pick = |set: &[u64]| {
        let v = set[i % set.len()];
        i /= set.len();
        v
    };
    let (l1, l2, l3, l4) = (
        pick(&PROBE_L1),
        pick(&PROBE_L2),
        pick(&PROBE_L3),
        pick(&PROBE_L4),
    );
    let gva = (l4 << 39) | (l3 << 30) | (l2 << 21) | (l1 << 12);
    // Sign-extend bit 47.
    ((gva << 16) as i64 >> 16) as u64
}

/// Which frame an entry points at (or a raw entry).
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A page table: the twelve table frames, then the boot tables (PT, PD, PDPT of the direct
    /// map, then each vCPU's PML4), index mod their number.
    Table(u8),
    /// A data frame (mod [`DATA`]).
    Data(u8),
    /// Shadow-pool page `k` (mod the pool size), written as if it were guest-physical.
    Pool(u8),
    /// Monitor frame `k` (mod its frames), written as if it were guest-physical.
    Monitor(u8),
    /// The last frame of guest RAM.
    LastRam,
    /// `k` frames past the end of guest RAM.
    BeyondRam(u16),
    /// The whole entry as given (the flags are ignored).
    Raw(u64),
}

/// A page-table entry: a target plus flags. `flags` bits 0..11 are the entry's low bits (P, W,
/// U, PWT, PCD, A, D, PS, G, available); bit 12 sets NX, bit 13 reserved bit 51, bit 14
/// available bit 52, bit 15 reserved bit 46 (the guest's MAXPHYADDR).
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte {
    /// What it points at.
    pub target: Target,
    /// Flags, as described above.
    pub flags: u16,
}

impl Pte {
    /// A present, writable, user entry to `target` (a link or a mapping).
    pub fn rwu(target: Target) -> Self {
        Pte {
            target,
            flags: (pte::P | pte::W | pte::U) as u16,
        }
    }
}

/// One guest (or VMM) operation. `cpu` picks the vCPU (0 or 1) that performs it.
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store `pte` into slot `slot` (mod the probe slots) of table `table` (as
    /// [`Target::Table`]) through the direct map.
    SetPte {
        /// vCPU.
        cpu: bool,
        /// Table.
        table: u8,
        /// Slot selector.
        slot: u8,
        /// The entry.
        pte: Pte,
    },
    /// Map probe address `probe` to `leaf` in the tables under `root` (as
    /// [`Target::Table`]): every missing or unusable level on the way gets a link (`P|W|U`) to
    /// table frame `tables[i]`, which may alias a table already in use (recursive links).
    /// An existing leaf is overwritten (a remap).
    Map {
        /// vCPU.
        cpu: bool,
        /// Root table.
        root: u8,
        /// Probe address.
        probe: u8,
        /// Tables for levels 3, 2, 1 where one is missing.
        tables: [u8; 3],
        /// The leaf entry.
        leaf: Pte,
    },
    /// Clear the leaf entry of probe address `probe` under `root`, if the walk reaches one.
    Unmap {
        /// vCPU.
        cpu: bool,
        /// Root table.
        root: u8,
        /// Probe address.
        probe: u8,
    },
    /// Store `pte` at probe address `probe` + 8 × slot: through whatever the guest's tables
    /// map there (a page table, through a recursive link). With `fresh`, INVLPG first, and the
    /// store must land in the frame the guest maps.
    Write {
        /// vCPU.
        cpu: bool,
        /// Probe address.
        probe: u8,
        /// Slot selector.
        slot: u8,
        /// The value stored.
        pte: Pte,
        /// INVLPG first and check where the store landed.
        fresh: bool,
    },
    /// Read probe address `probe` (TLB, shadow walk, fault).
    Read {
        /// vCPU.
        cpu: bool,
        /// Probe address.
        probe: u8,
    },
    /// INVLPG of probe address `probe`, then check it.
    Invlpg {
        /// vCPU.
        cpu: bool,
        /// Probe address.
        probe: u8,
    },
    /// A guest TLB flush, then check every probe.
    Flush {
        /// vCPU.
        cpu: bool,
    },
    /// Load CR3 with `root`'s address, then check every probe.
    LoadCr3 {
        /// vCPU.
        cpu: bool,
        /// The new root (any target: a table, a data frame, outside RAM).
        root: Target,
    },
    /// The VMM zaps every shadow page (`kvm_mmu_zap_all`, as on a memslot change).
    ZapAll,
}

/// A fuzz input: the VM's parameters and the ops.
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Seed of the gfn → mfn permutation.
    pub seed: u8,
    /// Sync policy (mod 4): rmb-fence, acquire-load, always-lock, seqcst-fence.
    pub policy: u8,
    /// Pool pages above the minimum for two vCPUs (mod 64).
    pub pool: u8,
    /// The operations (the first [`MAX_OPS`]).
    pub ops: Vec<Op>,
}

/// What went wrong: a divergence from the guest's reference or a VMM failure.
#[derive(Debug, thiserror::Error)]
pub enum Finding {
    /// The VM could not be built.
    #[error("setting up the VM: {0}")]
    Setup(#[from] SimError),
    /// An MMU call failed with a VMM error (not the guest's doing).
    #[error("op {op} ({what}): the VMM failed: {fault}")]
    Vmm {
        /// Op index.
        op: usize,
        /// What the op was doing.
        what: &'static str,
        /// The failure.
        fault: SimFault,
    },
    /// The shadow translation is not the guest's.
    #[error("op {op}: vCPU {cpu}: {detail}")]
    Translation {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// [`check_translation`]'s description.
        detail: String,
    },
    /// A shadow translation or TLB entry reaches the pool or the monitor.
    #[error("op {op}: vCPU {cpu}: {gva:#x} reaches machine page {mpa:#x} ({what})")]
    Reached {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// The address.
        gva: u64,
        /// The machine page reached.
        mpa: u64,
        /// Pool, monitor, or the monitor slot mapping something else.
        what: &'static str,
    },
    /// The guest's tables grant an access that faulted.
    #[error("op {op}: vCPU {cpu}: the guest grants the {access} at {gva:#x}, it faulted: {fault}")]
    Denied {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// The address.
        gva: u64,
        /// "read" or "write".
        access: &'static str,
        /// The fault.
        fault: SimFault,
    },
    /// An access the guest's tables deny succeeded after the guest invalidated it.
    #[error("op {op}: vCPU {cpu}: the guest faults at {gva:#x}, yet a read after INVLPG/flush returned {got:#x}")]
    Allowed {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// The address.
        gva: u64,
        /// What the read returned.
        got: u64,
    },
    /// A read after invalidation returned something other than the guest's frame holds.
    #[error("op {op}: vCPU {cpu}: read {got:#x} at {gva:#x}, the guest's frame {gpa:#x} holds {want:#x}")]
    StaleRead {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// The address.
        gva: u64,
        /// The guest-physical address read.
        gpa: u64,
        /// Read through the vCPU.
        got: u64,
        /// In the frame.
        want: u64,
    },
    /// A store after INVLPG did not land in the frame the guest maps.
    #[error("op {op}: vCPU {cpu}: stored {value:#x} at {gva:#x}, the guest's frame {gpa:#x} holds {got:#x}")]
    LostStore {
        /// Op index.
        op: usize,
        /// vCPU.
        cpu: usize,
        /// The address.
        gva: u64,
        /// Guest-physical address of the store.
        gpa: u64,
        /// The value stored.
        value: u64,
        /// What the frame holds.
        got: u64,
    },
    /// `Mmu::audit` failed.
    #[error("op {op}: audit: {detail}")]
    Audit {
        /// Op index (`ops.len()` for the final audit).
        op: usize,
        /// The violation.
        detail: String,
    },
}

/// What a run exercised (for tests that check a scenario did what it says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Ops run.
    pub ops: usize,
    /// Probe addresses checked after an invalidation.
    pub checks: u64,
    /// Checked addresses the shadow tables translated.
    pub shadow_hits: u64,
    /// Guest faults (accesses the guest's tables denied).
    pub guest_faults: u64,
    /// Of which reserved-bit faults (bad entries, PS, addresses outside RAM).
    pub reserved_faults: u64,
    /// CR3 loads refused as outside guest RAM.
    pub bad_cr3: u64,
    /// Stores the MMU emulated (to write-protected guest tables).
    pub emulated: u64,
    /// Leaf tables the MMU let go unsync.
    pub unsyncs: u64,
    /// Shadow pages zapped.
    pub zapped: u64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops, {} checks ({} translated), {} guest faults ({} reserved), {} bad CR3, {} emulated, {} unsyncs, {} zapped",
            self.ops,
            self.checks,
            self.shadow_hits,
            self.guest_faults,
            self.reserved_faults,
            self.bad_cr3,
            self.emulated,
            self.unsyncs,
            self.zapped
        )
    }
}

/// Runs `input` under the policy it names.
pub fn run(input: &Input) -> Result<Outcome, Finding> {
    match input.policy % 4 {
        0 => run_with::<RmbFence>(input),
        1 => run_with::<AcquireLoad>(input),
        2 => run_with::<AlwaysLock>(input),
        _ => run_with::<SeqCstFence>(input),
    }
}

/// Runs `input` under policy `P` (the input's `policy` is ignored).
pub fn run_with<P: SyncPolicy>(input: &Input) -> Result<Outcome, Finding> {
    let cfg = SimConfig {
        vcpus: VCPUS,
        seed: input.seed as u64,
        ram_bytes: RAM_BYTES,
        pool_pages: MIN_POOL + (input.pool % 64) as u64,
    };
    let vm = SimVm::<P>::new(&cfg)?;
    let monitor = Monitor::link(&vm);
    let cpus = [vm.cpu(0)?, vm.cpu(1)?];
    let mut h = Harness {
        vm: &vm,
        cpus,
        monitor,
        tables: [0; TABLES + 5],
        data: [0; DATA],
        op: 0,
        out: Outcome::default(),
    };
    h.setup()?;
    let ops = &input.ops[..input.ops.len().min(MAX_OPS)];
    for (i, op) in ops.iter().enumerate() {
        h.op = i;
        h.step(op)?;
    }
    h.op = ops.len();
    // The end state: each vCPU flushes and is checked.
    for cpu in 0..VCPUS {
        h.flush(cpu)?;
    }
    h.out.ops = ops.len();
    let s = vm.mmu().stats();
    h.out.unsyncs = s.unsyncs;
    h.out.zapped = s.pages_zapped;
    h.out.emulated = h.cpus.iter().map(|c| c.stats().emulated).sum();
    Ok(h.out)
}

/// The monitor's tables on sim, as the kvm backend lays them out: its first frame mapped at
/// the start of slot 511 through a PDPT, PD and PT in the following frames, supervisor-only.
struct Monitor {
    /// Machine address of the monitor page the slot maps.
    page: u64,
}

impl Monitor {
    fn link<P: SyncPolicy>(vm: &SimVm<P>) -> Self {
        let mem = vm.mem();
        let m = mem.monitor_mpa();
        let region = mem.region();
        let store = |mpa: u64, v: u64| {
            // The monitor area is VMM memory inside the region: the store cannot fail.
            region
                .store_u64(mpa, v, Ordering::Relaxed)
                .expect("the monitor area is in the region");
        };
        let link = pte::P | pte::W;
        store(m + PAGE_SIZE, (m + 2 * PAGE_SIZE) | link);
        store(m + 2 * PAGE_SIZE, (m + 3 * PAGE_SIZE) | link);
        store(m + 3 * PAGE_SIZE, m | link | pte::NX);
        store(m, 0x6d6f_6e69_746f_7221);
        vm.mmu().link_monitor((m + PAGE_SIZE) | link);
        Monitor { page: m }
    }
}

struct Harness<'vm, P: SyncPolicy> {
    vm: &'vm SimVm<P>,
    cpus: [SimCpu<'vm, P>; VCPUS],
    monitor: Monitor,
    /// Guest-physical addresses of the table frames, then the boot tables.
    tables: [u64; TABLES + 5],
    data: [u64; DATA],
    op: usize,
    out: Outcome,
}

fn cpu_index(cpu: bool) -> usize {
    cpu as usize
}

/// Whether `gva` lies in the monitor's PML4 slot (checked, never accessed: sim's vCPUs run at
/// supervisor level, and the monitor is there for the VMM).
fn in_monitor_slot(gva: u64) -> bool {
    (gva >> 39) & 0x1ff == MONITOR_SLOT as u64
}

impl<'vm, P: SyncPolicy> Harness<'vm, P> {
    fn setup(&mut self) -> Result<(), Finding> {
        let boot = self.vm.boot();
        let free = self.cpus[0].free_frames();
        let mut next = free.start;
        for t in &mut self.tables[..TABLES] {
            *t = next;
            next += PAGE_SIZE;
        }
        for d in &mut self.data {
            *d = next;
            next += PAGE_SIZE;
        }
        // The boot tables: PT, PD, PDPT of the direct map, then the PML4s.
        let boot_frames = boot.table_frames.clone().step_by(PAGE_SIZE as usize);
        for (t, gpa) in self.tables[TABLES..].iter_mut().zip(boot_frames) {
            *t = gpa;
        }
        // Data frames tagged with their own address, so a read tells which frame it hit.
        let mem = self.vm.mem();
        for &d in &self.data {
            mem.write_gpa_u64(d, d ^ 0x5eed_0000_0000_0000, Ordering::Relaxed)
                .map_err(|e| self.vmm("tagging data frames", SimFault::Mmu(e.into())))?;
        }
        Ok(())
    }

    fn vmm(&self, what: &'static str, fault: SimFault) -> Finding {
        Finding::Vmm {
            op: self.op,
            what,
            fault,
        }
    }

    fn table(&self, i: u8) -> u64 {
        self.tables[i as usize % self.tables.len()]
    }

    fn target_addr(&self, t: Target) -> u64 {
        let mem = self.vm.mem();
        match t {
            Target::Table(i) => self.table(i),
            Target::Data(i) => self.data[i as usize % DATA],
            Target::Pool(k) => mem.pool_page_mpa((k as u64 % mem.pool_frames()) as u32),
            Target::Monitor(k) => mem.monitor_mpa() + (k as u64 % MONITOR_FRAMES) * PAGE_SIZE,
            Target::LastRam => mem.ram_bytes() - PAGE_SIZE,
            Target::BeyondRam(k) => mem.ram_bytes() + k as u64 * PAGE_SIZE,
            Target::Raw(v) => v,
        }
    }

    fn value(&self, p: Pte) -> u64 {
        if let Target::Raw(v) = p.target {
            return v;
        }
        let f = p.flags as u64;
        let mut v = (self.target_addr(p.target) & pte::ADDR_MASK) | (f & 0xfff);
        for (bit, set) in [(12, pte::NX), (13, 1 << 51), (14, 1 << 52), (15, 1 << 46)] {
            if f & (1 << bit) != 0 {
                v |= set;
            }
        }
        v
    }

    /// A guest store: `Ok(true)` if it happened, `Ok(false)` if the guest's tables denied it
    /// (and they do deny it: otherwise that is a finding).
    fn guest_store(&mut self, cpu: usize, gva: u64, value: u64) -> Result<bool, Finding> {
        let granted = self.cpus[cpu]
            .guest_translate(gva)
            .is_ok_and(|t| t.access & ACC_WRITE != 0);
        match self.cpus[cpu].try_write_u64(gva, value) {
            Ok(()) => Ok(true),
            Err(SimFault::Guest(f)) if !granted => {
                self.out.guest_faults += 1;
                self.out.reserved_faults += f.is_reserved() as u64;
                Ok(false)
            }
            Err(fault @ SimFault::Guest(_)) => Err(Finding::Denied {
                op: self.op,
                cpu,
                gva,
                access: "write",
                fault,
            }),
            Err(fault) => Err(self.vmm("guest store", fault)),
        }
    }

    /// The guest's entry at `table` slot `index`, as its tables hold it now (a reference read,
    /// not an access).
    fn read_entry(&self, table: u64, index: u64) -> Option<u64> {
        self.vm
            .mem()
            .read_gpa_u64(table + index * 8, Ordering::Relaxed)
            .ok()
    }

    /// The table an entry links to, if the guest's walker would follow it at `level`.
    fn linked_table(&self, entry: u64, level: u32) -> Option<u64> {
        let rsvd = (((1u64 << 52) - 1) & !((1u64 << 46) - 1)) | if level > 1 { pte::PS } else { 0 };
        let next = entry & pte::ADDR_MASK;
        (entry & pte::P != 0 && entry & rsvd == 0 && self.vm.mem().gpa_to_mpa(next).is_some())
            .then_some(next)
    }

    fn step(&mut self, op: &Op) -> Result<(), Finding> {
        match *op {
            Op::SetPte {
                cpu,
                table,
                slot,
                pte,
            } => {
                let gpa = self.table(table) + SLOTS[slot as usize % SLOTS.len()] * 8;
                let v = self.value(pte);
                self.guest_store(cpu_index(cpu), direct_map(gpa), v)?;
            }
            Op::Map {
                cpu,
                root,
                probe,
                tables,
                leaf,
            } => {
                let cpu = cpu_index(cpu);
                let gva = probe_gva(probe);
                let mut table = self.table(root);
                for level in (2..=4u32).rev() {
                    let index = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
                    let entry = self.read_entry(table, index).unwrap_or(0);
                    table = match self.linked_table(entry, level) {
                        Some(next) => next,
                        None => {
                            let next = self.table(tables[4 - level as usize]);
                            let link = next | pte::P | pte::W | pte::U;
                            if !self.guest_store(cpu, direct_map(table + index * 8), link)? {
                                return Ok(());
                            }
                            next
                        }
                    };
                }
                let index = (gva >> 12) & 0x1ff;
                let v = self.value(leaf);
                self.guest_store(cpu, direct_map(table + index * 8), v)?;
            }
            Op::Unmap { cpu, root, probe } => {
                let gva = probe_gva(probe);
                let mut table = self.table(root);
                for level in (2..=4u32).rev() {
                    let index = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
                    let entry = self.read_entry(table, index).unwrap_or(0);
                    let Some(next) = self.linked_table(entry, level) else {
                        return Ok(());
                    };
                    table = next;
                }
                let index = (gva >> 12) & 0x1ff;
                self.guest_store(cpu_index(cpu), direct_map(table + index * 8), 0)?;
            }
            Op::Write {
                cpu,
                probe,
                slot,
                pte,
                fresh,
            } => {
                let cpu = cpu_index(cpu);
                let gva = probe_gva(probe) + SLOTS[slot as usize % SLOTS.len()] * 8;
                if in_monitor_slot(gva) {
                    return Ok(());
                }
                let v = self.value(pte);
                if fresh {
                    self.cpus[cpu].invlpg(gva);
                }
                let target = self.cpus[cpu].guest_translate(gva);
                if self.guest_store(cpu, gva, v)? && fresh {
                    // Writable per the guest (the store did not fault), so `target` is Ok.
                    if let Ok(t) = target {
                        let gpa = t.gpa_page + (gva & 0xfff);
                        let got =
                            self.vm
                                .mem()
                                .read_gpa_u64(gpa, Ordering::Relaxed)
                                .map_err(|e| {
                                    self.vmm("reading back a store", SimFault::Mmu(e.into()))
                                })?;
                        if got != v {
                            return Err(Finding::LostStore {
                                op: self.op,
                                cpu,
                                gva,
                                gpa,
                                value: v,
                                got,
                            });
                        }
                    }
                }
            }
            Op::Read { cpu, probe } => {
                let cpu = cpu_index(cpu);
                let gva = probe_gva(probe);
                if in_monitor_slot(gva) {
                    return Ok(());
                }
                // Between invalidations a read may use a stale TLB entry (as on hardware), but
                // it must not fault where the guest's tables grant it.
                let granted = self.cpus[cpu].guest_translate(gva).is_ok();
                match self.cpus[cpu].try_read_u64(gva) {
                    Ok(_) => {}
                    Err(SimFault::Guest(_)) if !granted => self.out.guest_faults += 1,
                    Err(fault @ SimFault::Guest(_)) => {
                        return Err(Finding::Denied {
                            op: self.op,
                            cpu,
                            gva,
                            access: "read",
                            fault,
                        })
                    }
                    Err(fault) => return Err(self.vmm("read", fault)),
                }
                self.check_tlb(cpu, gva)?;
            }
            Op::Invlpg { cpu, probe } => {
                let cpu = cpu_index(cpu);
                let gva = probe_gva(probe);
                self.cpus[cpu].invlpg(gva);
                self.check(cpu, gva)?;
                self.audit()?;
            }
            Op::Flush { cpu } => self.flush(cpu_index(cpu))?,
            Op::LoadCr3 { cpu, root } => {
                let cpu = cpu_index(cpu);
                let cr3 = self.target_addr(root) & pte::ADDR_MASK;
                match self.cpus[cpu].try_load_cr3(cr3) {
                    Ok(()) => self.check_all(cpu)?,
                    // Refused (on kvm a failed hypercall): the vCPU stays on its old root and
                    // nothing was synced, so this is no invalidation and nothing is checked.
                    Err(SimFault::Mmu(MmuError::BadCr3(_)))
                        if self.vm.mem().gpa_to_mpa(cr3).is_none() =>
                    {
                        self.out.bad_cr3 += 1;
                    }
                    Err(fault) => return Err(self.vmm("CR3 load", fault)),
                }
            }
            Op::ZapAll => {
                self.vm.mmu().kvm_mmu_zap_all();
                self.audit()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, cpu: usize) -> Result<(), Finding> {
        self.cpus[cpu].flush_tlb();
        self.check_all(cpu)
    }

    fn check_all(&mut self, cpu: usize) -> Result<(), Finding> {
        for p in 0..PROBES {
            self.check(cpu, probe_gva(p as u8))?;
        }
        self.audit()
    }

    fn audit(&self) -> Result<(), Finding> {
        self.vm.mmu().audit().map_err(|detail| Finding::Audit {
            op: self.op,
            detail,
        })
    }

    /// Checks `gva` on `cpu` after that vCPU invalidated it.
    fn check(&mut self, cpu: usize, gva: u64) -> Result<(), Finding> {
        self.out.checks += 1;
        let mem = self.vm.mem();
        let shadow = self.cpus[cpu].shadow_translate(gva);
        if in_monitor_slot(gva) {
            // Slot 511 is the monitor's in every root, whatever the guest's PML4 says: the
            // monitor page at its first address, nothing elsewhere, never user-accessible.
            let want = (gva & ((1 << 39) - 1) == 0).then_some(self.monitor.page);
            let ok = match (&shadow, want) {
                (Ok(t), Some(page)) => t.mpa_page == page && t.access & ACC_USER == 0,
                (Err(ShadowMiss::NotPresent { .. }), None) => true,
                _ => false,
            };
            if !ok {
                return Err(Finding::Reached {
                    op: self.op,
                    cpu,
                    gva,
                    mpa: shadow.map_or(0, |t| t.mpa_page),
                    what: "the monitor's slot does not map exactly the monitor",
                });
            }
            return Ok(());
        }
        if let Ok(t) = &shadow {
            self.out.shadow_hits += 1;
            self.not_vmm_page(cpu, gva, t.mpa_page)?;
        }
        let guest = self.cpus[cpu].guest_translate(gva);
        check_translation(gva, &guest, &shadow).map_err(|detail| Finding::Translation {
            op: self.op,
            cpu,
            detail,
        })?;
        // Through the vCPU: what the guest's frame holds, or a fault exactly where the guest's
        // tables deny the read.
        let got = self.cpus[cpu].try_read_u64(gva);
        match (guest, got) {
            (Ok(t), Ok(got)) => {
                let want = mem
                    .read_gpa_u64(t.gpa_page, Ordering::Relaxed)
                    .map_err(|e| self.vmm("reading the guest's frame", SimFault::Mmu(e.into())))?;
                if got != want {
                    return Err(Finding::StaleRead {
                        op: self.op,
                        cpu,
                        gva,
                        gpa: t.gpa_page,
                        got,
                        want,
                    });
                }
            }
            (Ok(_), Err(fault @ SimFault::Guest(_))) => {
                return Err(Finding::Denied {
                    op: self.op,
                    cpu,
                    gva,
                    access: "read",
                    fault,
                })
            }
            (Err(_), Err(SimFault::Guest(f))) => {
                self.out.guest_faults += 1;
                self.out.reserved_faults += f.is_reserved() as u64;
            }
            (Err(_), Ok(got)) => {
                return Err(Finding::Allowed {
                    op: self.op,
                    cpu,
                    gva,
                    got,
                })
            }
            (_, Err(fault)) => return Err(self.vmm("read after invalidation", fault)),
        }
        self.check_tlb(cpu, gva)
    }

    /// The vCPU's TLB entry for `gva`, if any, maps neither the pool nor the monitor.
    fn check_tlb(&self, cpu: usize, gva: u64) -> Result<(), Finding> {
        match self.cpus[cpu].tlb_entry(gva) {
            Some(e) => self.not_vmm_page(cpu, gva, e.mpa_page),
            None => Ok(()),
        }
    }

    fn not_vmm_page(&self, cpu: usize, gva: u64, mpa: u64) -> Result<(), Finding> {
        let mem = self.vm.mem();
        let what = if mem.pool_index(mpa).is_some() {
            "a shadow-pool page"
        } else if mem.is_monitor_mpa(mpa) {
            "the monitor"
        } else if mem.mfn_to_gfn(mpa >> 12).is_none() {
            "no guest RAM"
        } else {
            return Ok(());
        };
        Err(Finding::Reached {
            op: self.op,
            cpu,
            gva,
            mpa,
            what,
        })
    }
}
