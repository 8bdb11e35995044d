//! `exit-floor` through the whole VMM path against a raw `KVM_RUN` loop over the same guest
//! instruction, side by side in one process (issue 4, performance goal: <= 1.05x).
//!
//! One VM, one vCPU running the guest's NOP_LOOP forever: every iteration is one hypercall
//! exit (the MMIO window on a software-virtualised host, port I/O elsewhere). `raw` re-enters
//! at once; `vmm` goes through `kvm::vcpu::step` (request checks, decode, `handle_exit`, the
//! action), exactly as a run does. Without /dev/kvm the benchmark prints one SKIPPED line.
//!
//! `cargo bench -p shadowlab-framework --bench exit_floor`
// criterion_group!/criterion_main! generate public functions with no place for a doc comment.
#![allow(missing_docs)]

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_ioctls::VcpuExit;
use shadowlab_abi::GuestMode;
use shadowlab_framework::kvm::boot::{self, GuestParams};
use shadowlab_framework::kvm::elf::ElfImage;
use shadowlab_framework::kvm::exit::ExitState;
use shadowlab_framework::kvm::guest_image::GUEST_ELF;
use shadowlab_framework::kvm::vcpu::{step, Shared};
use shadowlab_framework::kvm::vcpu_fd::Vcpu;
use shadowlab_framework::kvm::vm::Vm;
use shadowlab_framework::kvm::{
    kvm_unavailable_reason, new_kicks, program, HypercallPath, NativeMmu,
};

fn setup() -> (Vm, Vcpu) {
    let vm = Vm::new(64 << 20, 1).expect("VM");
    let image = ElfImage::parse(GUEST_ELF).expect("guest ELF");
    let params = GuestParams::builtin(program::NOP_LOOP, u64::MAX);
    let mmio = HypercallPath::Auto.resolve() == HypercallPath::Mmio;
    let plan = boot::prepare(vm.ram(), &image, 1, GuestMode::Native, &params, mmio).expect("boot");
    let vcpu = vm
        .create_vcpu(0, plan.entry, &plan.vcpus[0], plan.vcpus[0].boot_root)
        .expect("vCPU");
    (vm, vcpu)
}

fn exit_floor(c: &mut Criterion) {
    if let Some(reason) = kvm_unavailable_reason() {
        eprintln!("SKIPPED: /dev/kvm not available: {reason} (bench exit_floor)");
        return;
    }
    let (vm, mut vcpu) = setup();
    let kicks = new_kicks(1);
    let timed_out = AtomicBool::new(false);
    let shared = Shared {
        mem: vm.ram(),
        monitor: vm.monitor(),
        mmu: &NativeMmu,
        kicks: &kicks,
        timed_out: &timed_out,
        timeout_ms: 0,
    };
    let mut st = ExitState::new(0);
    // Warm up past the guest's boot (its first ucalls) into the NOP loop.
    for _ in 0..1000 {
        assert!(step(&mut vcpu, &shared, &mut st).expect("step").is_none());
    }

    let mut g = c.benchmark_group("exit_floor");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("raw_kvm_run", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                match vcpu.run() {
                    Ok(Some(VcpuExit::MmioWrite(..) | VcpuExit::IoOut(..))) => {}
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            t.elapsed()
        })
    });
    g.bench_function("vmm_path", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                if let Some(o) = step(&mut vcpu, &shared, &mut st).expect("step") {
                    panic!("the NOP loop stopped: {o:?}");
                }
            }
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, exit_floor);
criterion_main!(benches);
