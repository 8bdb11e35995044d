//! The shadow MMU's correctness oracle, under every correct policy.
//!
//! Property: after any sequence of guest page-table operations (map, unmap, protect, remap,
//! switch root, tables shared between address spaces, INVLPG or flush at random points), every
//! guest virtual address translates the same through the guest's own tables (the reference
//! walk) and through the shadow tables, permissions included, once the guest has invalidated
//! it; and what the vCPU reads through the address (software TLB included) is what the guest
//! mapped there. The MMU's own invariants (`audit`) hold at the end.
//!
//! Privilege and access kind: leaves and upper-level entries get every combination of U, W,
//! NX (and A, D), and the vCPU makes user and supervisor reads, writes and instruction fetches
//! right after invalidating the page. Each outcome (success or fault, and the #PF error code)
//! must be what an independent reference predicts (the workloads crate's walker and x86's
//! permission rules, not the MMU's own code), and the guest's A/D bits must be set exactly as
//! a hardware walk sets them (A at every level on success, D on the leaf for a write, nothing
//! on a fault). Each test prints and checks its case counts by kind, privilege and outcome.
//!
//! Stress: the race the protocol guards against (`unsync-race` on 2 and 3 vCPUs) over many
//! rounds: the workload checks every translation after each flush and fails on a stale one.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use shadowlab_abi::layout::{direct_map, pt_index, pte, WORKLOAD_BASE};
use shadowlab_framework::mem::GuestMemory;
use shadowlab_framework::mmu::check_translation;
use shadowlab_framework::sim::{self, Privilege, SimConfig, SimCpu, SimFault, SimVm};
use shadowlab_policies::{AcquireLoad, AlwaysLock, RmbFence, SeqCstFence, SyncPolicy};
use shadowlab_workloads::{
    walk, Access, Cpu, FaultKind, Flags, FrameAlloc, PageTables, Params, PhysRead, PtError, Run,
    TlbGather, RET,
};

/// Pages the operations touch: six under PML4 slot 1 (whose subtree both address spaces
/// share), spread over two leaf tables, and six under slot 2 (private to each space).
const PAGES: usize = 12;
const DATA_FRAMES: usize = 6;

fn page_gva(page: usize) -> u64 {
    let (slot, i) = if page < 6 { (1, page) } else { (2, page - 6) };
    // Pages 0..3 and 3..6 of a slot land in different 2 MiB regions, i.e. different leaf tables.
    WORKLOAD_BASE * slot + (i as u64 / 3) * (2 << 20) + (i as u64 % 3) * 4096 * 7
}

/// The same pages, but each leaf table's three consecutive: one aligned group of the shadow
/// MMU's PTE prefetch (`PTE_PREFETCH_NUM`), so a fault on one also maps its mapped neighbours
/// and the comparison covers prefetched SPTEs.
fn dense_page_gva(page: usize) -> u64 {
    let (slot, i) = if page < 6 { (1, page) } else { (2, page - 6) };
    WORKLOAD_BASE * slot + (i as u64 / 3) * (2 << 20) + (i as u64 % 3) * 4096
}

/// Where in a data page [`Cpu::fetch`] finds its `ret` (data reads and writes use offset 0).
const RET_OFFSET: u64 = 0xff8;

/// Permission bits of an entry the operations write: W, U, NX, and A (D too on a leaf).
#[derive(Clone, Copy, Debug)]
struct Perm {
    w: bool,
    u: bool,
    nx: bool,
    a: bool,
    d: bool,
}

impl Perm {
    fn bits(self) -> u64 {
        let b = |on, bit| if on { bit } else { 0 };
        pte::P
            | b(self.w, pte::W)
            | b(self.u, pte::U)
            | b(self.nx, pte::NX)
            | b(self.a, pte::A)
            | b(self.d, pte::D)
    }
    /// A leaf: user RW data or read-only, as the workloads map them, or anything.
    fn leaf(writable: bool) -> Perm {
        Perm {
            w: writable,
            u: true,
            nx: true,
            a: true,
            d: writable,
        }
    }
}

fn perm() -> impl Strategy<Value = Perm> {
    prop_oneof![
        1 => any::<bool>().prop_map(Perm::leaf),
        // U mostly set and NX mostly clear, so user accesses and fetches succeed often enough
        // (every level must allow them).
        2 => (any::<bool>(), prop::bool::weighted(0.8), prop::bool::weighted(0.2), any::<[bool; 2]>())
            .prop_map(|(w, u, nx, [a, d])| Perm { w, u, nx, a, d }),
    ]
}

/// What an access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Fetch,
}

const KINDS: [Kind; 3] = [Kind::Read, Kind::Write, Kind::Fetch];

fn kind_priv() -> impl Strategy<Value = (Kind, Privilege)> {
    (
        prop::sample::select(&KINDS[..]),
        prop_oneof![Just(Privilege::User), Just(Privilege::Supervisor)],
    )
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        space: usize,
        page: usize,
        frame: usize,
        perm: Perm,
    },
    Unmap {
        space: usize,
        page: usize,
    },
    Protect {
        space: usize,
        page: usize,
        perm: Perm,
    },
    /// Rewrites the permission bits of the upper-level entry (`level` 2..=4) on `page`'s
    /// path, if present, keeping its address (D is not a permission above the leaf).
    ProtectUpper {
        space: usize,
        page: usize,
        level: u32,
        perm: Perm,
    },
    /// INVLPG, then two accesses with nothing changed between them: each outcome must be
    /// the reference's, the second one served by what the first left in the TLB.
    Access {
        page: usize,
        first: (Kind, Privilege),
        second: (Kind, Privilege),
    },
    SwitchRoot {
        space: usize,
    },
    Invlpg {
        page: usize,
    },
    Flush,
    Read {
        page: usize,
    },
    WriteFresh {
        page: usize,
        value: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..PAGES;
    prop_oneof![
        4 => (0..2usize, page.clone(), 0..DATA_FRAMES, perm())
            .prop_map(|(space, page, frame, perm)| Op::Map { space, page, frame, perm }),
        2 => (0..2usize, page.clone()).prop_map(|(space, page)| Op::Unmap { space, page }),
        2 => (0..2usize, page.clone(), perm())
            .prop_map(|(space, page, perm)| Op::Protect { space, page, perm }),
        2 => (0..2usize, page.clone(), 2..=4u32, perm())
            .prop_map(|(space, page, level, perm)| Op::ProtectUpper { space, page, level, perm }),
        4 => (page.clone(), kind_priv(), kind_priv())
            .prop_map(|(page, first, second)| Op::Access { page, first, second }),
        1 => (0..2usize).prop_map(|space| Op::SwitchRoot { space }),
        2 => page.clone().prop_map(|page| Op::Invlpg { page }),
        1 => Just(Op::Flush),
        3 => page.clone().prop_map(|page| Op::Read { page }),
        1 => (page, any::<u64>()).prop_map(|(page, value)| Op::WriteFresh { page, value }),
    ]
}

fn config(seed: u64) -> SimConfig {
    SimConfig {
        vcpus: 1,
        seed,
        ram_bytes: 8 << 20,
        pool_pages: 128,
    }
}

/// Checks one address after the guest invalidated it: shadow agrees with guest, and a
/// (supervisor) read through the address returns what the guest maps there.
fn check_page<P: SyncPolicy>(cpu: &mut SimCpu<'_, P>, gva: u64) -> Result<(), String> {
    cpu.set_privilege(Privilege::Supervisor);
    let guest = cpu.guest_translate(gva);
    check_translation(gva, &guest, &cpu.shadow_translate(gva))?;
    match guest {
        Ok(t) => {
            let want = cpu.read_u64(direct_map(t.gpa_page));
            match cpu.try_read_u64(gva) {
                Ok(got) if got == want => Ok(()),
                Ok(got) => Err(format!(
                    "{gva:#x}: read {got:#x} through the TLB, the guest maps {:#x} holding {want:#x}",
                    t.gpa_page
                )),
                Err(e) => Err(format!("{gva:#x}: mapped by the guest but faulted: {e}")),
            }
        }
        Err(_) => match cpu.try_read_u64(gva) {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("{gva:#x}: unmapped by the guest yet read {v:#x}")),
        },
    }
}

/// Guest-physical memory for the independent reference walker.
struct Phys<'a>(&'a GuestMemory);

impl PhysRead for Phys<'_> {
    fn read_phys(&mut self, gpa: u64) -> Option<u64> {
        self.0.read_gpa_u64(gpa, Ordering::Acquire).ok()
    }
}

/// What x86 does with an access (CR0.WP = 1, EFER.NXE = 1, no SMEP/SMAP), from the
/// workloads crate's walker and the SDM's error-code rules, independently of the MMU's code:
/// `Ok` with the walk, or the #PF error code (P = 1, W = 2, U = 4, RSVD = 8, I/D = 16).
fn reference(
    mem: &GuestMemory,
    cr3: u64,
    gva: u64,
    kind: Kind,
    privilege: Privilege,
) -> Result<shadowlab_workloads::Translation, u32> {
    let access = Access {
        write: kind == Kind::Write,
        user: privilege == Privilege::User,
        fetch: kind == Kind::Fetch,
    };
    let bits = if access.write { 2 } else { 0 }
        | if access.user { 4 } else { 0 }
        | if access.fetch { 16 } else { 0 };
    match walk(&mut Phys(mem), cr3, gva) {
        Ok(t) if t.permits(access) => Ok(t),
        Ok(_) => Err(1 | bits),
        Err(f) if f.kind == FaultKind::NotPresent => Err(bits),
        Err(f) if f.kind == FaultKind::Reserved => Err(1 | 8 | bits),
        Err(f) => panic!("the oracle's pages are canonical: {f:?}"),
    }
}

/// Accesses run, by kind, privilege (user, supervisor) and outcome (success, fault).
#[derive(Default)]
struct Counts([[[AtomicU64; 2]; 2]; 3]);

impl Counts {
    fn add(&self, kind: Kind, privilege: Privilege, fault: bool) {
        let k = KINDS.iter().position(|&x| x == kind).unwrap();
        let p = usize::from(privilege == Privilege::Supervisor);
        self.0[k][p][usize::from(fault)].fetch_add(1, Ordering::Relaxed);
    }
    /// Prints the table and checks every (kind, privilege, outcome) was exercised.
    fn report(&self, test: &str) {
        let mut line = format!("{test}: accesses checked against the reference:");
        for (k, kind) in KINDS.iter().enumerate() {
            for (p, privilege) in ["user", "supervisor"].iter().enumerate() {
                let [ok, fault] = [0, 1].map(|f| self.0[k][p][f].load(Ordering::Relaxed));
                line += &format!(" {kind:?}/{privilege} ok {ok} fault {fault};");
                assert!(
                    ok > 0 && fault > 0,
                    "{test}: {kind:?}/{privilege} not exercised"
                );
            }
        }
        eprintln!("{line}");
    }
}

/// One access, right after its page's TLB entry (or, for the second, nothing) changed: the
/// outcome must be the reference's, and the guest's A/D bits what the walk sets.
fn check_access<P: SyncPolicy>(
    cpu: &mut SimCpu<'_, P>,
    gva: u64,
    (kind, privilege): (Kind, Privilege),
    value: u64,
    counts: &Counts,
) -> Result<(), String> {
    let mem = cpu.vm().mem().clone();
    let want = reference(&mem, cpu.cr3(), gva, kind, privilege);
    // The entries of the walk, as far as it goes, before the access.
    let entries = |cpu: &SimCpu<'_, P>| {
        let mut e = [None; 4];
        let mut table = cpu.cr3() & pte::ADDR_MASK;
        for level in (1..=4u32).rev() {
            let v = mem.read_gpa_u64(table + 8 * pt_index(gva, level) as u64, Ordering::Acquire);
            let Ok(v) = v else { break };
            e[4 - level as usize] = Some(v);
            if v & pte::P == 0 {
                break;
            }
            table = v & pte::ADDR_MASK;
        }
        e
    };
    let before = entries(cpu);
    cpu.set_privilege(privilege);
    let got = match kind {
        Kind::Read => cpu.try_read_u64(gva).map(|_| ()),
        Kind::Write => cpu.try_write_u64(gva, value),
        Kind::Fetch => cpu.try_fetch(gva + RET_OFFSET),
    };
    let after = entries(cpu);
    let what = format!("{kind:?} from {privilege:?} at {gva:#x}");
    counts.add(kind, privilege, want.is_err());
    match (want, got) {
        (Ok(t), Ok(())) => {
            for (i, e) in after.iter().enumerate() {
                let e = e.unwrap_or(0);
                let mut need = pte::A;
                if i == 3 && kind == Kind::Write {
                    need |= pte::D;
                }
                if e & need != need {
                    return Err(format!(
                        "{what}: entry {i} of the walk is {e:#x} after the access, A/D not set"
                    ));
                }
            }
            if kind == Kind::Write {
                let landed = mem
                    .read_gpa_u64(t.gpa, Ordering::Acquire)
                    .map_err(|e| e.to_string())?;
                if landed != value {
                    return Err(format!("{what}: the store did not reach {:#x}", t.gpa));
                }
            }
            Ok(())
        }
        (Err(code), Err(SimFault::Guest(f))) if !f.general_protection => {
            if f.error_code != code {
                return Err(format!(
                    "{what}: error code {:#x}, the reference says {code:#x}",
                    f.error_code
                ));
            }
            if before != after {
                return Err(format!(
                    "{what}: a faulting access changed the guest's entries {before:x?} -> {after:x?}"
                ));
            }
            Ok(())
        }
        (Ok(_), Err(e)) => Err(format!("{what}: the reference allows it, the vCPU: {e}")),
        (Err(code), Ok(())) => Err(format!(
            "{what}: succeeded, the reference faults with {code:#x}"
        )),
        (Err(code), Err(e)) => Err(format!("{what}: {e}, the reference faults with {code:#x}")),
    }
}

/// Runs one generated sequence with the pages at `page_gva`, counting accesses in `counts`;
/// `Err` names the first disagreement, `Ok` carries the MMU's prefetch count.
fn run_ops_on<P: SyncPolicy>(
    seed: u64,
    ops: &[Op],
    page_gva: fn(usize) -> u64,
    counts: &Counts,
) -> Result<u64, String> {
    let vm = SimVm::<P>::new(&config(seed)).map_err(|e| e.to_string())?;
    let mut cpu = vm.cpu(0).map_err(|e| e.to_string())?;
    let mut frames = FrameAlloc::for_cpu(&cpu);
    let pte = |e: PtError| format!("page tables: {e}");
    let boot = cpu.boot_root();

    // Data frames, each tagged with its own address so a read tells which frame it hit.
    let data: Vec<u64> = (0..DATA_FRAMES)
        .map(|_| frames.alloc(&mut cpu))
        .collect::<Result<_, _>>()
        .map_err(pte)?;
    for &f in &data {
        cpu.write_u64(direct_map(f), f ^ 0x5eed_0000_0000_0000);
        cpu.write_u64(direct_map(f) + RET_OFFSET, u64::from(RET));
    }
    // Space A, with slot 1's tables created; space B shares slot 1's subtree with A.
    let mut a = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).map_err(pte)?;
    a.map(&mut cpu, &mut frames, page_gva(0), data[0], Flags::RW)
        .map_err(pte)?;
    let b = PageTables::new_root(&mut cpu, &mut frames, a.root(), &[1]).map_err(pte)?;
    let mut spaces = [a, b];
    let mut current = 0;
    cpu.load_cr3(spaces[0].root());

    for (i, op) in ops.iter().enumerate() {
        let mut gather = TlbGather::new();
        let at = |e: String| format!("op {i} {op:?}: {e}");
        match *op {
            Op::Map {
                space,
                page,
                frame,
                perm,
            } => {
                let pt = &mut spaces[space];
                let (gva, gpa) = (page_gva(page), data[frame]);
                let flags = Flags(perm.bits());
                match pt.map(&mut cpu, &mut frames, gva, gpa, flags) {
                    Err(PtError::AlreadyMapped { .. }) => {
                        pt.remap(&mut cpu, gva, gpa, flags, &mut gather)
                            .map_err(pte)
                            .map_err(at)?;
                    }
                    r => r.map_err(pte).map_err(at)?,
                }
            }
            Op::Unmap { space, page } => {
                match spaces[space].unmap(&mut cpu, page_gva(page), &mut gather) {
                    Ok(_) | Err(PtError::NotMapped { .. }) => {}
                    Err(e) => return Err(at(pte(e))),
                }
            }
            Op::Protect { space, page, perm } => {
                match spaces[space].protect(
                    &mut cpu,
                    page_gva(page),
                    Flags(perm.bits()),
                    &mut gather,
                ) {
                    Ok(_) | Err(PtError::NotMapped { .. }) => {}
                    Err(e) => return Err(at(pte(e))),
                }
            }
            Op::ProtectUpper {
                space,
                page,
                level,
                perm,
            } => {
                let gva = page_gva(page);
                let mut table = spaces[space].root();
                for l in ((level + 1)..=4).rev() {
                    let e = cpu.read_u64(direct_map(table + 8 * pt_index(gva, l) as u64));
                    table = if e & pte::P != 0 {
                        e & pte::ADDR_MASK
                    } else {
                        0
                    };
                }
                if table != 0 {
                    let slot = direct_map(table + 8 * pt_index(gva, level) as u64);
                    let old = cpu.read_u64(slot);
                    if old & pte::P != 0 {
                        let perm = Perm { d: false, ..perm };
                        cpu.write_u64(slot, (old & pte::ADDR_MASK) | perm.bits());
                    }
                }
            }
            Op::Access {
                page,
                first,
                second,
            } => {
                let gva = page_gva(page);
                cpu.invlpg(gva);
                let value = (i as u64) << 32 | 0xacce55;
                check_access(&mut cpu, gva, first, value, counts).map_err(at)?;
                check_access(&mut cpu, gva, second, value + 1, counts)
                    .map_err(|e| at(format!("second access: {e}")))?;
            }
            Op::SwitchRoot { space } => {
                current = space;
                cpu.load_cr3(spaces[space].root());
                for p in 0..PAGES {
                    check_page(&mut cpu, page_gva(p)).map_err(at)?;
                }
            }
            Op::Invlpg { page } => {
                cpu.invlpg(page_gva(page));
                check_page(&mut cpu, page_gva(page)).map_err(at)?;
            }
            Op::Flush => {
                cpu.flush_tlb();
                for p in 0..PAGES {
                    check_page(&mut cpu, page_gva(p)).map_err(at)?;
                }
            }
            // A read between invalidations may legitimately hit a stale TLB entry (as on
            // hardware); it must not fail where the guest grants the access.
            Op::Read { page } => {
                let gva = page_gva(page);
                cpu.set_privilege(Privilege::Supervisor);
                if let (Ok(_), Err(e)) = (cpu.guest_translate(gva), cpu.try_read_u64(gva)) {
                    return Err(at(format!(
                        "{gva:#x}: guest grants a read, vCPU faulted: {e}"
                    )));
                }
            }
            // A store right after invalidating the page must land in the frame the guest maps.
            Op::WriteFresh { page, value } => {
                let gva = page_gva(page);
                cpu.set_privilege(Privilege::Supervisor);
                cpu.invlpg(gva);
                if let Ok(t) = cpu.guest_translate(gva) {
                    if t.access & 2 != 0 {
                        cpu.try_write_u64(gva, value)
                            .map_err(|e| at(format!("{gva:#x}: writable, yet faulted: {e}")))?;
                        let landed = cpu.read_u64(direct_map(t.gpa_page));
                        if landed != value {
                            return Err(at(format!(
                                "{gva:#x}: store did not reach the guest's frame"
                            )));
                        }
                    }
                }
            }
        }
        // The gather's pages are the caller's to invalidate; the ops above decide when.
        drop(gather);
    }
    // The end state, after a flush, on both roots.
    for space in [current, 1 - current] {
        cpu.load_cr3(spaces[space].root());
        for p in 0..PAGES {
            check_page(&mut cpu, page_gva(p)).map_err(|e| format!("final, space {space}: {e}"))?;
        }
    }
    vm.mmu().audit().map_err(|e| format!("audit: {e}"))?;
    Ok(vm.mmu().stats().prefetched)
}

const CASES: u32 = 1000;

/// The property over `CASES` generated sequences under policy `P` (failures persist in
/// `oracle.proptest-regressions` and are shrunk, as with `proptest!`), then the case counts.
fn oracle<P: SyncPolicy>(test: &str, page_gva: fn(usize) -> u64) {
    let counts = Counts::default();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let strategy = (any::<u64>(), prop::collection::vec(op(), 1..60));
    let r = runner.run(&strategy, |(seed, ops)| {
        prop_assert_eq!(
            run_ops_on::<P>(seed, &ops, page_gva, &counts).map(|_| ()),
            Ok(())
        );
        Ok(())
    });
    if let Err(e) = r {
        panic!("{test}: {e}");
    }
    counts.report(test);
}

#[test]
fn shadow_matches_guest_under_rmb_fence() {
    oracle::<RmbFence>("rmb-fence", page_gva);
}

#[test]
fn shadow_matches_guest_under_acquire_load() {
    oracle::<AcquireLoad>("acquire-load", page_gva);
}

#[test]
fn shadow_matches_guest_under_always_lock() {
    oracle::<AlwaysLock>("always-lock", page_gva);
}

#[test]
fn shadow_matches_guest_under_seqcst_fence() {
    oracle::<SeqCstFence>("seqcst-fence", page_gva);
}

#[test]
fn prefetched_shadow_matches_guest_under_rmb_fence() {
    oracle::<RmbFence>("rmb-fence, prefetched", dense_page_gva);
}

#[test]
fn prefetched_shadow_matches_guest_under_always_lock() {
    oracle::<AlwaysLock>("always-lock, prefetched", dense_page_gva);
}

/// The dense layout really exercises the prefetch: map a leaf table's three pages, touch the
/// first, and the other two are prefetched (the comparison then covers them), where the
/// sparse layout's pages are too far apart (the boot's own mappings prefetch the same in
/// both).
#[test]
fn dense_pages_are_prefetched() {
    let ops = [0, 1, 2]
        .map(|page| Op::Map {
            space: 0,
            page,
            frame: page,
            perm: Perm::leaf(page != 1),
        })
        .into_iter()
        .chain([Op::Read { page: 0 }, Op::Flush])
        .collect::<Vec<_>>();
    let counts = Counts::default();
    let dense = run_ops_on::<RmbFence>(1, &ops, dense_page_gva, &counts).unwrap();
    let sparse = run_ops_on::<RmbFence>(1, &ops, page_gva, &counts).unwrap();
    assert_eq!(dense, sparse + 2, "dense {dense}, sparse {sparse}");
}

/// Rounds of the unsync race per (policy, vCPU count).
const RACE_ROUNDS: u64 = 20_000;

fn race<P: SyncPolicy>(vcpus: usize) {
    let w = shadowlab_workloads::Workload::from_name("unsync-race")
        .expect("unsync-race exists")
        .with_params(Params {
            iters: RACE_ROUNDS,
            seed: 5,
            size: 4,
        });
    let cfg = SimConfig {
        vcpus,
        seed: 5,
        ram_bytes: 16 << 20,
        pool_pages: 512,
    };
    let run = sim::run_with::<P, _, _>(&cfg, |cpu| w.run(cpu)).expect("the VM runs");
    let mut checks = 0;
    for (v, r) in run.results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{} vCPU {v}: {e}", P::NAME));
        assert_eq!(r.ops, RACE_ROUNDS, "{} vCPU {v}", P::NAME);
        checks += r.checks;
    }
    // vCPU 0 checks every writer's slots after every round.
    assert!(
        checks >= RACE_ROUNDS * (vcpus as u64 - 1),
        "{}: {checks} checks",
        P::NAME
    );
    // The race window was really exercised: leaf tables went unsync and were synced.
    assert!(
        run.mmu.unsyncs > RACE_ROUNDS / 10,
        "{}: {:?}",
        P::NAME,
        run.mmu
    );
    assert!(
        run.mmu.syncs > RACE_ROUNDS / 10,
        "{}: {:?}",
        P::NAME,
        run.mmu
    );
}

#[test]
fn unsync_race_stress_sees_no_stale_translation_on_2_and_3_vcpus() {
    for vcpus in [2, 3] {
        race::<RmbFence>(vcpus);
        race::<AcquireLoad>(vcpus);
        race::<AlwaysLock>(vcpus);
        race::<SeqCstFence>(vcpus);
    }
}
