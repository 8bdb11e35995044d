//! The protocol itself, in loom's atomics: two vCPUs, one shadow root with one unsync-able leaf
//! below it.

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc as StdArc, Mutex as StdMutex};

use core::sync::atomic::Ordering;
use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64};
use loom::sync::{Arc, Mutex};

use super::{Coverage, Verdict, WalkerModel};
use crate::{
    publish_unsync, unsync_under_lock, MemoryModel, SyncPolicy, UnsyncFlags, UnsyncMarker,
};

/// The gPTE value before and after the reader's guest write.
const OLD_GPTE: u64 = 0x1000 | 1;
const NEW_GPTE: u64 = 0x2000 | 1;

/// The events of one execution, in the order loom scheduled them. A std mutex, not a loom one:
/// it is bookkeeping outside the model and must not add interleavings.
#[derive(Clone, Default)]
struct Trace(StdArc<StdMutex<Vec<String>>>);

impl Trace {
    fn log(&self, event: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A shadow page's unsync state in loom atomics; its loads are recorded in the trace.
struct ModelPage {
    name: &'static str,
    unsync: AtomicBool,
    unsync_children: AtomicU32,
}

/// A shadow page seen from one vCPU, so that its loads are attributed in the trace.
struct Seen<'a> {
    page: &'a ModelPage,
    who: &'static str,
    trace: &'a Trace,
}

impl UnsyncFlags for Seen<'_> {
    fn load_unsync(&self, order: Ordering) -> bool {
        let v = self.page.unsync.load(order);
        self.trace.log(format!(
            "{}: load {}.unsync ({order:?}) -> {v}",
            self.who, self.page.name
        ));
        v
    }
    fn load_unsync_children(&self, order: Ordering) -> u32 {
        let v = self.page.unsync_children.load(order);
        self.trace.log(format!(
            "{}: load {}.unsync_children ({order:?}) -> {v}",
            self.who, self.page.name
        ));
        v
    }
}

/// Loom's fences, recorded in the trace (with `note` after the event, e.g. "[smp_wmb]").
struct LoomMemory<'a> {
    who: &'static str,
    note: &'static str,
    trace: &'a Trace,
    /// A negative control for the tests only: the writer's fence is skipped (but still logged),
    /// to show that the model's verdicts rest on the fence in the shared writer.
    elide: bool,
}

impl MemoryModel for LoomMemory<'_> {
    fn fence(&self, order: Ordering) {
        if self.elide {
            self.trace.log(format!(
                "{}: fence({order:?}) ELIDED{}",
                self.who, self.note
            ));
            return;
        }
        self.trace
            .log(format!("{}: fence({order:?}){}", self.who, self.note));
        fence(order);
    }
}

/// The writer's flag stores, in loom atomics: [`publish_unsync`]'s view of the model. The
/// model's only unsync-able page is its leaf, and the leaf's only parent is the root.
struct ModelMarker<'a> {
    root: &'a ModelPage,
    who: &'static str,
    trace: &'a Trace,
}

impl<'a> UnsyncMarker for ModelMarker<'a> {
    type Page = &'a ModelPage;

    fn set_unsync(&mut self, sp: &'a ModelPage, order: Ordering) {
        sp.unsync.store(true, order);
        self.trace
            .log(format!("{}: store {}.unsync = true", self.who, sp.name));
    }

    fn mark_parents_unsync(&mut self, _sp: &'a ModelPage, order: Ordering) {
        // mark_unsync() on the leaf's one parent entry: the root's unsync_children goes 0 -> 1,
        // and the root has no parent to walk on to.
        let v = self.root.unsync_children.fetch_add(1, order) + 1;
        self.trace.log(format!(
            "{}: store {}.unsync_children = {v}",
            self.who, self.root.name
        ));
    }
}

struct Vm {
    /// KVM's `mmu_lock` (a rwlock in KVM; both sides here take it for write).
    mmu_lock: Mutex<()>,
    root: ModelPage,
    leaf: ModelPage,
    /// SPTE.W of the shadow entry that maps the guest's leaf page-table page.
    spte_w: AtomicBool,
    /// The guest's PTE inside that leaf page table.
    gpte: AtomicU64,
    /// The shadow PTE the hardware uses for it; written only under `mmu_lock`.
    shadow_pte: AtomicU64,
}

/// vCPU 1: a write fault on the guest's leaf page table, `mmu_try_to_unsync_pages()`: the
/// shared writer [`publish_unsync`] (the code the VMM runs), then the caller's store of
/// SPTE.W = 1. That store is relaxed here, the weakest the caller could make and what KVM makes
/// (`mmu_spte_set` is a `WRITE_ONCE`), so the fence alone carries the ordering; the shadow MMU's
/// `store_spte` is a Release store (for new links, whose tables must be seen zeroed), which
/// only adds order, so a correct verdict here holds for the VMM's store too. `elide_fence` is
/// the tests' negative control.
fn writer(vm: &Vm, trace: &Trace, elide_fence: bool) {
    let who = "vCPU1 (mmu_try_to_unsync_pages)";
    let _guard = vm.mmu_lock.lock().unwrap();
    trace.log(format!("{who}: write_lock(mmu_lock)"));
    let mem = LoomMemory {
        who,
        note: "  [smp_wmb]",
        trace,
        elide: elide_fence,
    };
    let mut marker = ModelMarker {
        root: &vm.root,
        who,
        trace,
    };
    publish_unsync(&mem, &mut marker, [&vm.leaf]);
    vm.spte_w.store(true, Ordering::Relaxed);
    trace.log(format!("{who}: store SPTE.W = 1  [gPT page now writable]"));
    trace.log(format!("{who}: write_unlock(mmu_lock)"));
}

/// vCPU 0: walks, writes its gPTE through the writable mapping, flushes, and runs
/// `kvm_mmu_sync_roots()` with policy `P`. Returns the path taken and whether the guest then
/// runs on a stale translation.
fn reader<P: SyncPolicy>(vm: &Vm, walker: WalkerModel, trace: &Trace) -> (Path, bool) {
    let who = "vCPU0 (guest, then kvm_mmu_sync_roots)";
    let w = vm.spte_w.load(walker.ordering());
    trace.log(format!(
        "{who}: page walk loads SPTE.W ({:?}) -> {}",
        walker.ordering(),
        w as u8
    ));
    if !w {
        // The guest's store faults and the VMM handles it under mmu_lock: not the race.
        trace.log(format!(
            "{who}: guest store faults (SPTE.W = 0), handled under mmu_lock"
        ));
        return (Path::WriteFaulted, false);
    }
    vm.gpte.store(NEW_GPTE, Ordering::Relaxed);
    trace.log(format!(
        "{who}: guest writes gPTE = {NEW_GPTE:#x} through the writable SPTE"
    ));
    trace.log(format!(
        "{who}: guest flushes its TLB -> is_unsync_root({})",
        P::NAME
    ));

    let seen = Seen {
        page: &vm.root,
        who,
        trace,
    };
    let mut path = Path::Skipped;
    let mem = LoomMemory {
        who,
        note: "",
        trace,
        elide: false,
    };
    if P::is_unsync_root(&mem, &seen) {
        let _guard = vm.mmu_lock.lock().unwrap();
        trace.log(format!("{who}: write_lock(mmu_lock)"));
        if unsync_under_lock(&seen) {
            // mmu_sync_children() -> kvm_sync_page(): re-read the gPTE, rewrite the SPTE,
            // clear the unsync state and write-protect the gPT page again.
            let g = vm.gpte.load(Ordering::Relaxed);
            vm.shadow_pte.store(g, Ordering::Relaxed);
            vm.leaf.unsync.store(false, Ordering::Relaxed);
            vm.root.unsync_children.fetch_sub(1, Ordering::Relaxed);
            vm.spte_w.store(false, Ordering::Relaxed);
            path = Path::Synced;
            trace.log(format!("{who}: mmu_sync_children: shadow PTE = {g:#x}"));
        }
        trace.log(format!("{who}: write_unlock(mmu_lock)"));
    } else {
        trace.log(format!(
            "{who}: is_unsync_root -> false: sync SKIPPED, no lock taken"
        ));
    }
    let used = vm.shadow_pte.load(Ordering::Relaxed);
    let stale = used != NEW_GPTE;
    trace.log(format!(
        "{who}: guest translates through shadow PTE {used:#x}{}",
        if stale {
            "  <-- STALE: the guest wrote its PTE and flushed, yet runs on the old translation"
        } else {
            ""
        }
    ));
    (path, stale)
}

/// The path one execution of the reader took.
enum Path {
    WriteFaulted,
    Synced,
    Skipped,
}

/// Explores the protocol under loom with policy `P`.
///
/// `elide_writer_fence` skips the release fence of the shared writer: only the tests' negative
/// control sets it.
pub(super) fn explore<P: SyncPolicy>(walker: WalkerModel, elide_writer_fence: bool) -> Verdict {
    let executions = StdArc::new(StdAtomicU64::new(0));
    let violating = StdArc::new(StdAtomicU64::new(0));
    let coverage: StdArc<StdMutex<Coverage>> = StdArc::default();
    let first: StdArc<StdMutex<Option<Vec<String>>>> = StdArc::default();

    let mut builder = loom::model::Builder::new();
    // Exhaustive: the model has two threads and a dozen operations.
    builder.preemption_bound = None;
    {
        let (executions, violating, first, coverage) = (
            executions.clone(),
            violating.clone(),
            first.clone(),
            coverage.clone(),
        );
        builder.check(move || {
            executions.fetch_add(1, StdOrdering::Relaxed);
            let trace = Trace::default();
            let vm = Arc::new(Vm {
                mmu_lock: Mutex::new(()),
                root: ModelPage {
                    name: "root",
                    unsync: AtomicBool::new(false),
                    unsync_children: AtomicU32::new(0),
                },
                leaf: ModelPage {
                    name: "leaf",
                    unsync: AtomicBool::new(false),
                    unsync_children: AtomicU32::new(0),
                },
                spte_w: AtomicBool::new(false),
                gpte: AtomicU64::new(OLD_GPTE),
                shadow_pte: AtomicU64::new(OLD_GPTE),
            });
            let writer_thread = {
                let (vm, trace) = (vm.clone(), trace.clone());
                loom::thread::spawn(move || writer(&vm, &trace, elide_writer_fence))
            };
            let (path, stale) = reader::<P>(&vm, walker, &trace);
            writer_thread.join().unwrap();
            {
                let mut c = coverage.lock().unwrap_or_else(|e| e.into_inner());
                match path {
                    Path::WriteFaulted => c.write_faulted += 1,
                    Path::Synced => c.synced += 1,
                    Path::Skipped => c.skipped += 1,
                }
            }
            if stale {
                violating.fetch_add(1, StdOrdering::Relaxed);
                let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(trace.take());
                }
            }
        });
    }

    let executions = executions.load(StdOrdering::Relaxed);
    let violating = violating.load(StdOrdering::Relaxed);
    let coverage = *coverage.lock().unwrap_or_else(|e| e.into_inner());
    let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    match first {
        None => Verdict::Correct {
            executions,
            coverage,
        },
        Some(interleaving) => Verdict::Violation {
            executions,
            coverage,
            violating,
            interleaving,
        },
    }
}
