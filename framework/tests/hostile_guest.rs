//! Hostile guest page tables, replayed through the harness the cargo-fuzz target uses
//! (`framework/fuzz`, see its README): hand-written scenarios for each kind of hostile entry,
//! and the op sequences the fuzzer found failing, as regression tests. Each runs under every
//! correct policy; the harness checks every translation against the guest's reference walk
//! after each invalidation, and that neither the pool nor the monitor is ever reachable.

#[allow(dead_code)] // `run`, `MAX_OPS`: the fuzz target's half of the harness
#[path = "hostile_guest/harness.rs"]
mod harness;

use harness::{Input, Op, Outcome, Pte, Target};
use shadowlab_policies::{AcquireLoad, AlwaysLock, RmbFence, SeqCstFence};

/// The table index (as [`Target::Table`]) of vCPU 0's boot PML4: after the twelve table
/// frames come the direct map's PT, PD and PDPT, then the PML4s.
const ROOT0: u8 = harness::TABLES as u8 + 3;
/// vCPU 1's boot PML4.
const ROOT1: u8 = ROOT0 + 1;

/// Probe 0: slot 1 of the PML4, then index 0 at each level (`1 << 39`).
const P_SLOT1: u8 = 0;
/// Probe 17: slot 1, then index 1 at levels 3, 2 and 1 (through a PML4 that links itself at
/// slot 1 it is the PML4 page itself).
const P_RECURSIVE: u8 = 17;

const P: u16 = 1;
const W: u16 = 2;
const U: u16 = 4;
const PS: u16 = 0x80;

fn input(ops: Vec<Op>) -> Input {
    Input {
        seed: 7,
        policy: 0,
        pool: 20,
        ops,
    }
}

/// Runs `ops` under every correct policy; returns the outcome under the first.
fn run_all(ops: Vec<Op>) -> Outcome {
    let input = input(ops);
    let first = harness::run_with::<RmbFence>(&input).unwrap_or_else(|f| panic!("rmb-fence: {f}"));
    for (name, r) in [
        ("acquire-load", harness::run_with::<AcquireLoad>(&input)),
        ("always-lock", harness::run_with::<AlwaysLock>(&input)),
        ("seqcst-fence", harness::run_with::<SeqCstFence>(&input)),
    ] {
        let o = r.unwrap_or_else(|f| panic!("{name}: {f}"));
        assert_eq!(o, first, "{name} ran differently from rmb-fence");
    }
    first
}

#[test]
fn probe_addresses_are_the_documented_ones() {
    assert_eq!(harness::probe_gva(P_SLOT1), 1 << 39);
    assert_eq!(
        harness::probe_gva(P_RECURSIVE),
        (1 << 39) | (1 << 30) | (1 << 21) | (1 << 12)
    );
    // The monitor's slot is probed, canonically (sign-extended).
    assert!((0..harness::PROBES as u8)
        .map(harness::probe_gva)
        .any(|g| g == 0xffff_ff80_0000_0000));
}

/// A PML4 that links itself: the recursive mapping makes the PML4 a leaf at probe 17, and a
/// store through it is a write to a shadowed root table, which the MMU must emulate (never
/// map writable) and whose effect the next flush must show.
#[test]
fn recursive_pml4_is_followed_and_stores_through_it_are_emulated() {
    let o = run_all(vec![
        Op::SetPte {
            cpu: false,
            table: ROOT0,
            slot: 1,
            pte: Pte::rwu(Target::Table(ROOT0)),
        },
        Op::Flush { cpu: false },
        // PML4[2] = table frame 0, through the recursive mapping.
        Op::Write {
            cpu: false,
            probe: P_RECURSIVE,
            slot: 2,
            pte: Pte::rwu(Target::Table(0)),
            fresh: true,
        },
        Op::Map {
            cpu: false,
            root: ROOT0,
            probe: 1,
            tables: [1, 2, 3],
            leaf: Pte::rwu(Target::Data(0)),
        },
        Op::Flush { cpu: false },
        Op::Invlpg {
            cpu: false,
            probe: P_RECURSIVE,
        },
    ]);
    assert!(o.emulated > 0, "{o}");
    assert!(o.shadow_hits > 0, "{o}");
}

/// Entries that point at the shadow pool, the monitor, past RAM or at a raw all-ones value,
/// and PS in upper levels: every one is a reserved-bit fault for the guest, never a mapping
/// of VMM memory.
#[test]
fn pool_monitor_and_reserved_entries_never_map_vmm_memory() {
    let mut ops = Vec::new();
    for (probe, target) in [
        (P_SLOT1, Target::Pool(0)),
        (1, Target::Monitor(0)),
        (2, Target::BeyondRam(1)),
        (3, Target::Raw(u64::MAX)),
    ] {
        ops.push(Op::Map {
            cpu: false,
            root: ROOT0,
            probe,
            tables: [0, 1, 2],
            leaf: Pte {
                target,
                flags: P | W | U,
            },
        });
    }
    // PML4[2] with PS, and a PDE under slot 1 pointing at a pool page.
    ops.push(Op::SetPte {
        cpu: false,
        table: ROOT0,
        slot: 2,
        pte: Pte {
            target: Target::Table(4),
            flags: P | W | PS,
        },
    });
    ops.push(Op::SetPte {
        cpu: false,
        table: 1,
        slot: 1,
        pte: Pte::rwu(Target::Pool(3)),
    });
    ops.push(Op::Flush { cpu: false });
    ops.push(Op::LoadCr3 {
        cpu: true,
        root: Target::Table(ROOT0),
    });
    let o = run_all(ops);
    assert!(o.reserved_faults >= 5, "{o}");
}

/// The guest points slot 511 of both PML4s at its own tables: the monitor's slot keeps mapping
/// exactly the monitor (the harness checks it on every probe of slot 511).
#[test]
fn guest_pml4_slot_511_never_replaces_the_monitor() {
    let o = run_all(vec![
        Op::SetPte {
            cpu: false,
            table: ROOT0,
            slot: 5,
            pte: Pte::rwu(Target::Table(ROOT0)),
        },
        Op::SetPte {
            cpu: true,
            table: ROOT1,
            slot: 5,
            pte: Pte::rwu(Target::Data(0)),
        },
        Op::Flush { cpu: false },
        Op::Flush { cpu: true },
        Op::ZapAll,
        Op::LoadCr3 {
            cpu: false,
            root: Target::Table(ROOT1),
        },
    ]);
    assert!(o.checks as usize >= 4 * harness::PROBES, "{o}");
}

/// vCPU 1 rewrites a leaf table that vCPU 0 has shadowed (it goes unsync, or the store is
/// emulated): vCPU 0 sees the new mapping after its INVLPG, not before it is asked to.
#[test]
fn a_store_from_the_other_vcpu_is_seen_after_invlpg() {
    let o = run_all(vec![
        Op::Map {
            cpu: false,
            root: ROOT0,
            probe: P_SLOT1,
            tables: [0, 1, 2],
            leaf: Pte::rwu(Target::Data(0)),
        },
        Op::Flush { cpu: false },
        // Table 2 is probe 0's leaf table; slot 0 its entry.
        Op::SetPte {
            cpu: true,
            table: 2,
            slot: 0,
            pte: Pte::rwu(Target::Data(1)),
        },
        Op::SetPte {
            cpu: true,
            table: 2,
            slot: 1,
            pte: Pte::rwu(Target::Data(2)),
        },
        Op::Invlpg {
            cpu: false,
            probe: P_SLOT1,
        },
        Op::Flush { cpu: false },
    ]);
    assert!(o.unsyncs > 0, "{o}");
}

/// One table linked at two levels and at two places of one level (aliases), a CR3 load of a
/// data frame (garbage as a PML4) and one outside RAM.
#[test]
fn aliased_tables_and_bad_roots() {
    let o = run_all(vec![
        Op::Map {
            cpu: false,
            root: ROOT0,
            probe: P_SLOT1,
            tables: [0, 0, 0],
            leaf: Pte::rwu(Target::Data(0)),
        },
        Op::SetPte {
            cpu: false,
            table: ROOT0,
            slot: 2,
            pte: Pte::rwu(Target::Table(0)),
        },
        Op::Flush { cpu: false },
        Op::Write {
            cpu: false,
            probe: P_SLOT1,
            slot: 1,
            pte: Pte::rwu(Target::Table(1)),
            fresh: true,
        },
        Op::LoadCr3 {
            cpu: true,
            root: Target::Data(3),
        },
        Op::LoadCr3 {
            cpu: true,
            root: Target::Pool(0),
        },
        Op::Flush { cpu: false },
    ]);
    assert_eq!(o.bad_cr3, 1, "{o}");
    assert!(o.shadow_hits > 0, "{o}");
}

/// Found by the fuzzer (crash-520535fe…, `cargo fuzz fmt` of it below, policy 33 = acquire-load,
/// replayed here under all four). vCPU 1 links the direct map's PT (gfn 0, which its own entry
/// 0 maps: the PT maps itself) under the PD and writes a reserved entry into PT[0] through the
/// direct map, i.e. through the very page it edits: the leaf table goes unsync. Then a CR3
/// load outside RAM is refused (`BadCr3`). The harness used to check every translation after
/// it as after a flush and saw the unsync SPTE for `direct_map(0)` still mapping gpa 0 while
/// the guest faults. The MMU was right: a refused CR3 load loads nothing and syncs nothing (on
/// kvm it is a failed hypercall), so it is no invalidation; the harness no longer treats it as
/// one. The guest's next real flush must show the reserved entry.
#[test]
fn refused_cr3_load_is_no_invalidation_but_the_next_flush_is() {
    let mut ops = vec![
        Op::Map {
            cpu: true,
            root: 217,
            probe: 8,
            tables: [29, 29, 29],
            leaf: Pte {
                target: Target::LastRam,
                flags: 58263,
            },
        },
        Op::LoadCr3 {
            cpu: true,
            root: Target::Raw(1916927),
        },
    ];
    let input = Input {
        seed: 5,
        policy: 33,
        pool: 217,
        ops: ops.clone(),
    };
    let o = harness::run(&input).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(o.bad_cr3, 1, "{o}");
    assert!(o.unsyncs > 0, "{o}");
    // The same with a flush after the refused load: the direct map's first page now faults
    // with a reserved bit on vCPU 1 (the harness checks it against the guest's walk).
    ops.push(Op::Flush { cpu: true });
    let o = run_all(ops);
    assert!(o.reserved_faults > 0, "{o}");
}
