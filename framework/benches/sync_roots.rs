//! Microbenchmark of the lockless check: ns per `kvm_mmu_sync_roots` on a clean root, for each
//! policy, compiled into one binary (the MMU is generic over the policy, so each is its own
//! monomorphised copy, exactly as in a single-policy build).
//!
//! - `1-thread`: one vCPU syncing its clean root in a loop.
//! - `2-threads+faulter`: two vCPUs syncing their clean roots while a third vCPU takes shadow
//!   page faults (zap, then touch again) that hold the MMU write lock. On a 2-core host the
//!   three threads are oversubscribed; that is part of the measurement and is recorded.
//!
//! Run: `cargo bench -p shadowlab-framework --bench sync_roots`.
// criterion_group!/criterion_main! generate public functions with no place for a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shadowlab_abi::layout::{direct_map, WORKLOAD_BASE};
use shadowlab_framework::sim::{SimConfig, SimCpu, SimVm};
use shadowlab_policies::{
    AcquireLoad, AlwaysLock, NoBarrier, PolicyInfo, RmbFence, SeqCstFence, SyncPolicy,
};
use shadowlab_workloads::{Cpu, Flags, FrameAlloc, PageTables};

const FAULT_PAGES: u64 = 64;

/// The policy's name, with the UNSOUND label where it applies.
fn label<P: SyncPolicy>() -> &'static str {
    PolicyInfo::of::<P>().label()
}

fn vm<P: SyncPolicy>() -> SimVm<P> {
    SimVm::<P>::new(&SimConfig {
        vcpus: 3,
        seed: 1,
        ram_bytes: 32 << 20,
        pool_pages: 1024,
    })
    .expect("the VM builds")
}

/// Puts a vCPU on a root with a few mappings faulted in and synced: a clean root.
fn settle<P: SyncPolicy>(cpu: &mut SimCpu<'_, P>) {
    let root = cpu.boot_root();
    cpu.load_cr3(root);
    let _ = cpu.read_u64(direct_map(root));
    cpu.flush_tlb();
}

/// Maps `FAULT_PAGES` pages for the faulting vCPU; returns their gvas and gfns.
fn fault_area<P: SyncPolicy>(cpu: &mut SimCpu<'_, P>) -> Vec<(u64, u64)> {
    let mut frames = FrameAlloc::for_cpu(cpu);
    let mut pt = PageTables::from_root(cpu.boot_root());
    (0..FAULT_PAGES)
        .map(|i| {
            let gva = WORKLOAD_BASE + i * 4096;
            let gpa = frames.alloc(cpu).expect("frames");
            pt.map(cpu, &mut frames, gva, gpa, Flags::RW).expect("map");
            (gva, gpa >> 12)
        })
        .collect()
}

fn one_thread<P: SyncPolicy>(c: &mut Criterion, group: &str) {
    let vm = vm::<P>();
    let mut cpu = vm.cpu(0).expect("vCPU");
    settle(&mut cpu);
    let mmu = vm.mmu();
    c.benchmark_group(group)
        .bench_function(BenchmarkId::new("1-thread", label::<P>()), |b| {
            b.iter(|| mmu.kvm_mmu_sync_roots(black_box(cpu.vcpu_mmu())))
        });
}

fn two_threads_with_faulter<P: SyncPolicy>(c: &mut Criterion, group: &str) {
    let vm = vm::<P>();
    let mmu = vm.mmu();
    let mut syncers: Vec<_> = (0..2).map(|i| vm.cpu(i).expect("vCPU")).collect();
    for s in &mut syncers {
        settle(s);
    }
    let mut faulter = vm.cpu(2).expect("vCPU");
    let area = fault_area(&mut faulter);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (stop, area) = (&stop, &area);
        scope.spawn(move || {
            // Zap the leaf mappings and touch them again: every touch is a shadow page fault
            // under the MMU write lock, contending with the syncers' lock (always-lock) or only
            // with their cache lines (lockless policies).
            while !stop.load(Ordering::Relaxed) {
                for &(_, gfn) in area {
                    mmu.kvm_mmu_zap_gfn(gfn);
                }
                for &(gva, _) in area {
                    let _ = faulter.try_read_u64(gva);
                }
            }
        });
        c.benchmark_group(group).bench_function(
            BenchmarkId::new("2-threads+faulter", label::<P>()),
            |b| {
                b.iter_custom(|iters| {
                    let per_thread: Vec<Duration> = std::thread::scope(|s| {
                        let hs: Vec<_> = syncers
                            .iter()
                            .map(|cpu| {
                                let v = cpu.vcpu_mmu();
                                s.spawn(move || {
                                    let t = Instant::now();
                                    for _ in 0..iters {
                                        mmu.kvm_mmu_sync_roots(black_box(v));
                                    }
                                    t.elapsed()
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().expect("syncer")).collect()
                    });
                    // Per-call time of one syncer: the mean over the two threads.
                    per_thread.iter().sum::<Duration>() / per_thread.len() as u32
                })
            },
        );
        stop.store(true, Ordering::Relaxed);
    });
}

fn bench(c: &mut Criterion) {
    let g = "kvm_mmu_sync_roots/clean-root";
    one_thread::<AcquireLoad>(c, g);
    one_thread::<RmbFence>(c, g);
    one_thread::<AlwaysLock>(c, g);
    one_thread::<SeqCstFence>(c, g);
    one_thread::<NoBarrier>(c, g);
    two_threads_with_faulter::<AcquireLoad>(c, g);
    two_threads_with_faulter::<RmbFence>(c, g);
    two_threads_with_faulter::<AlwaysLock>(c, g);
    two_threads_with_faulter::<SeqCstFence>(c, g);
    two_threads_with_faulter::<NoBarrier>(c, g);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
