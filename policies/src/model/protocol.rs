//! The protocol itself, in loom's atomics: two vCPUs, one shadow root with one unsync-able leaf
//! below it.

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc as StdArc, Mutex as StdMutex};

use core::sync::atomic::Ordering;
use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64};
use loom::sync::{Arc, Mutex};

use super::{Verdict, WalkerModel};
use crate::{unsync_under_lock, MemoryModel, SyncPolicy, UnsyncFlags};

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

/// Loom's fences, recorded in the trace.
struct LoomMemory<'a> {
    who: &'static str,
    trace: &'a Trace,
}

impl MemoryModel for LoomMemory<'_> {
    fn fence(&self, order: Ordering) {
        self.trace.log(format!("{}: fence({order:?})", self.who));
        fence(order);
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

/// vCPU 1: a write fault on the guest's leaf page table, `mmu_try_to_unsync_pages()`.
fn writer(vm: &Vm, trace: &Trace) {
    let who = "vCPU1 (mmu_try_to_unsync_pages)";
    let _guard = vm.mmu_lock.lock().unwrap();
    trace.log(format!("{who}: write_lock(mmu_lock)"));
    vm.leaf.unsync.store(true, Ordering::Relaxed);
    trace.log(format!("{who}: store leaf.unsync = true"));
    // kvm_mmu_mark_parents_unsync(): the root learns it has an unsync child.
    vm.root.unsync_children.fetch_add(1, Ordering::Relaxed);
    trace.log(format!("{who}: store root.unsync_children = 1"));
    // smp_wmb(): the flags must be visible before anyone can write through SPTE.W = 1.
    trace.log(format!("{who}: fence(Release)  [smp_wmb]"));
    fence(Ordering::Release);
    vm.spte_w.store(true, Ordering::Relaxed);
    trace.log(format!("{who}: store SPTE.W = 1  [gPT page now writable]"));
    trace.log(format!("{who}: write_unlock(mmu_lock)"));
}

/// vCPU 0: walks, writes its gPTE through the writable mapping, flushes, and runs
/// `kvm_mmu_sync_roots()` with policy `P`. Returns whether the guest then runs on a stale
/// translation.
fn reader<P: SyncPolicy>(vm: &Vm, walker: WalkerModel, trace: &Trace) -> bool {
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
        return false;
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
    if P::is_unsync_root(&LoomMemory { who, trace }, &seen) {
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
    stale
}

/// Explores the protocol under loom with policy `P`.
pub(super) fn explore<P: SyncPolicy>(walker: WalkerModel) -> Verdict {
    let executions = StdArc::new(StdAtomicU64::new(0));
    let violating = StdArc::new(StdAtomicU64::new(0));
    let first: StdArc<StdMutex<Option<Vec<String>>>> = StdArc::default();

    let mut builder = loom::model::Builder::new();
    // Exhaustive: the model has two threads and a dozen operations.
    builder.preemption_bound = None;
    {
        let (executions, violating, first) = (executions.clone(), violating.clone(), first.clone());
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
                loom::thread::spawn(move || writer(&vm, &trace))
            };
            let stale = reader::<P>(&vm, walker, &trace);
            writer_thread.join().unwrap();
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
    let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    match first {
        None => Verdict::Correct { executions },
        Some(interleaving) => Verdict::Violation {
            executions,
            violating,
            interleaving,
        },
    }
}
