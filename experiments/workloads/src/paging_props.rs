//! Property test of the page-table manager: random sequences of map / unmap / protect / remap /
//! free-tables against a model, checked after every step with the reference walker (the guest's
//! tables) and with reads through the mapping on a CPU with a real TLB.

use proptest::prelude::*;

use crate::cpu::Cpu;
use crate::error::PtError;
use crate::frames::FrameAlloc;
use crate::mock::{Machine, TlbMode};
use crate::paging::{Flags, PageTables};
use crate::rng::pattern;
use crate::tlb::TlbGather;
use crate::walk::{walk, FaultKind};
use crate::workloads::{check_page, stamp};
use crate::Report;
use shadowlab_abi::layout::{pte, PAGE_SIZE, WORKLOAD_BASE};

const GIB: u64 = 1 << 30;
/// Candidate pages: neighbours in one table, another table in the same directory, another
/// directory (1 GiB region 1), and another PML4 slot.
const VAS: [u64; 8] = [
    WORKLOAD_BASE,
    WORKLOAD_BASE + PAGE_SIZE,
    WORKLOAD_BASE + 511 * PAGE_SIZE,
    WORKLOAD_BASE + 0x20_0000,
    WORKLOAD_BASE + GIB,
    WORKLOAD_BASE + GIB + PAGE_SIZE,
    WORKLOAD_BASE + (1 << 39),
    WORKLOAD_BASE + (1 << 39) + 3 * GIB,
];
/// The 1 GiB regions `FreeRegion` may free (each holds some of `VAS`).
const REGIONS: [u64; 4] = [
    WORKLOAD_BASE,
    WORKLOAD_BASE + GIB,
    WORKLOAD_BASE + (1 << 39),
    WORKLOAD_BASE + (1 << 39) + 3 * GIB,
];

#[derive(Clone, Debug)]
enum Op {
    Map(usize),
    Unmap(usize),
    Protect(usize, bool),
    Remap(usize),
    FreeRegion(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..VAS.len()).prop_map(Op::Map),
        2 => (0..VAS.len()).prop_map(Op::Unmap),
        2 => (0..VAS.len(), any::<bool>()).prop_map(|(i, w)| Op::Protect(i, w)),
        2 => (0..VAS.len()).prop_map(Op::Remap),
        1 => (0..REGIONS.len()).prop_map(Op::FreeRegion),
    ]
}

/// (frame, writable, stamp) of a mapped page.
type Page = Option<(u64, bool, u64)>;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn page_tables_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu_with(0, TlbMode::Real);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let initial = frames.available();
        let boot = cpu.boot_root();
        let mut pt = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        cpu.load_cr3(pt.root());
        let mut model: [Page; VAS.len()] = [None; VAS.len()];
        let mut tlb = TlbGather::new();
        let mut tag = 0;
        let mut report = Report::default();
        let mut fresh = |cpu: &mut crate::mock::MockCpu<'_>, frames: &mut FrameAlloc| {
            tag += 1;
            let f = frames.alloc(cpu).unwrap();
            let v = pattern(9, f, tag);
            stamp(cpu, f, v);
            (f, v)
        };
        for op in ops {
            match op {
                Op::Map(i) => {
                    let (f, v) = fresh(&mut cpu, &mut frames);
                    let r = pt.map(&mut cpu, &mut frames, VAS[i], f, Flags::RW);
                    if model[i].is_some() {
                        prop_assert_eq!(r, Err(PtError::AlreadyMapped { gva: VAS[i] }));
                        frames.free(&mut cpu, f).unwrap();
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        model[i] = Some((f, true, v));
                    }
                }
                Op::Unmap(i) => {
                    let r = pt.unmap(&mut cpu, VAS[i], &mut tlb);
                    match model[i].take() {
                        Some((f, _, _)) => {
                            prop_assert_eq!(r.map(|old| old & pte::ADDR_MASK), Ok(f));
                            tlb.free_after_flush(&mut cpu, &mut frames, f).unwrap();
                        }
                        None => prop_assert_eq!(r, Err(PtError::NotMapped { gva: VAS[i] })),
                    }
                }
                Op::Protect(i, w) => {
                    let flags = if w { Flags::RW } else { Flags::RO };
                    let r = pt.protect(&mut cpu, VAS[i], flags, &mut tlb);
                    match &mut model[i] {
                        Some(page) => {
                            prop_assert!(r.is_ok());
                            page.1 = w;
                        }
                        None => prop_assert_eq!(r, Err(PtError::NotMapped { gva: VAS[i] })),
                    }
                }
                Op::Remap(i) => {
                    let (f, v) = fresh(&mut cpu, &mut frames);
                    let r = pt.remap(&mut cpu, VAS[i], f, Flags::RW, &mut tlb);
                    match model[i] {
                        Some((old, _, _)) => {
                            prop_assert_eq!(r.map(|e| e & pte::ADDR_MASK), Ok(old));
                            tlb.free_after_flush(&mut cpu, &mut frames, old).unwrap();
                            model[i] = Some((f, true, v));
                        }
                        None => {
                            prop_assert_eq!(r, Err(PtError::NotMapped { gva: VAS[i] }));
                            frames.free(&mut cpu, f).unwrap();
                        }
                    }
                }
                Op::FreeRegion(r) => {
                    let (lo, hi) = (REGIONS[r], REGIONS[r] + GIB);
                    // Only legal once nothing is mapped there.
                    let busy = VAS.iter().zip(&model).any(|(&va, p)| p.is_some() && (lo..hi).contains(&va));
                    if !busy {
                        pt.free_tables(&mut cpu, &mut frames, lo, hi, &mut tlb).unwrap();
                    }
                }
            }
            tlb.finish(&mut cpu, &mut frames).unwrap();

            // The guest's tables say what the model says...
            for (&va, page) in VAS.iter().zip(&model) {
                match (walk(&mut &*m, pt.root(), va), page) {
                    (Ok(t), Some((f, w, _))) => {
                        prop_assert_eq!((t.frame(), t.writable, t.user, t.nx), (*f, *w, true, true));
                    }
                    (Err(e), None) => prop_assert_eq!(e.kind, FaultKind::NotPresent),
                    (t, p) => prop_assert!(false, "{:#x}: walk {:?}, model {:?}", va, t, p),
                }
            }
            // ...the CPU (real TLB) reads what was mapped...
            for (&va, page) in VAS.iter().zip(&model) {
                if let Some((_, _, v)) = page {
                    prop_assert_eq!(check_page(&mut cpu, &mut report, "prop read", va, *v), Ok(()));
                }
            }
            // ...and no frame leaked or was freed twice.
            let live = model.iter().flatten().count() as u64;
            let (made, freed) = pt.tables();
            prop_assert_eq!(frames.available() + live + made - freed, initial);
        }
    }
}
