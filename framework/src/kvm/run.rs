//! A whole run: build the VM, boot the guest on every vCPU (one thread each), wait under a
//! watchdog, collect reports and KVM's statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use shadowlab_abi::GuestMode;

use super::boot;
use super::config::{FaultInjection, RunConfig};
use super::error::KvmError;
use super::hooks::MmuHooks;
use super::kick::{self, make_all_cpus_request, VcpuKick, REQ_STOP};
use super::report::{FailureKind, RunResult, VcpuReport};
use super::stats::{self, StatsFd};
use super::vcpu::{run_vcpu, Shared};
use super::vm::Vm;

/// The error for the first vCPU that failed on its own (not merely stopped because another
/// failed), if any.
pub fn first_failure(result: &RunResult) -> Result<(), KvmError> {
    let failed = |own: bool| {
        result.vcpus.iter().find_map(|v| match &v.outcome {
            Err(f) if own != matches!(f.kind, FailureKind::Stopped(_)) => Some((v.vcpu, f.clone())),
            _ => None,
        })
    };
    match failed(true).or_else(|| failed(false)) {
        Some((vcpu, f)) => Err(KvmError::GuestFailed {
            vcpu,
            failure: Box::new(f),
        }),
        None => Ok(()),
    }
}

/// What a mode (`native` or the shadow MMU) brings to [`run_vm`].
pub struct RunParts<'a, M: ?Sized, H: ?Sized> {
    /// The hardware CR3 each vCPU starts on (the guest's boot roots in `native`, shadow roots
    /// in `kvm`).
    pub cr3s: &'a [u64],
    /// Guest RAM as the exit handler sees it.
    pub mem: &'a M,
    /// The MMU.
    pub mmu: &'a H,
    /// Each vCPU's kick state.
    pub kicks: &'a [VcpuKick],
    /// The mode: its name in results (`native`, or `kvm` for the shadow MMU).
    pub mode: GuestMode,
}

/// Creates the vCPUs, runs them to the end under the watchdog, and reports. Generic over the
/// MMU so that the `kvm` backend plugs in its shadow MMU.
pub fn run_vm<M, H>(
    vm: &Vm,
    config: &RunConfig,
    plan: &boot::BootPlan,
    parts: RunParts<'_, M, H>,
) -> Result<RunResult, KvmError>
where
    M: crate::mem::GuestPhys + Sync + ?Sized,
    H: MmuHooks + ?Sized,
{
    kick::install_handler().map_err(KvmError::SignalHandler)?;
    let RunParts {
        cr3s,
        mem,
        mmu,
        kicks,
        mode,
    } = parts;
    let n = config.nr_vcpus;
    if kicks.len() != n || plan.vcpus.len() != n || cr3s.len() != n {
        return Err(KvmError::VcpuPartsMismatch {
            vcpus: n,
            kicks: kicks.len(),
            plans: plan.vcpus.len(),
            cr3s: cr3s.len(),
        });
    }
    let mut vcpus = Vec::with_capacity(n);
    let mut vcpu_stats = Vec::with_capacity(n);
    for (i, boot) in plan.vcpus.iter().enumerate() {
        let vcpu = vm.create_vcpu(i, plan.entry, boot, cr3s[i])?;
        if config.inject == Some(FaultInjection::NoIdt) {
            let mut s = vcpu.get_sregs()?;
            s.idt.limit = 0;
            vcpu.set_sregs(&s)?;
        }
        vcpu_stats.push(StatsFd::open(vcpu.fd()).ok());
        vcpus.push(vcpu);
    }
    let vm_stats = StatsFd::open(vm.fd()).ok();
    let vm_before = vm_stats.as_ref().and_then(|s| s.snapshot().ok());
    let vcpu_before: Vec<_> = vcpu_stats
        .iter()
        .map(|s| s.as_ref().and_then(|s| s.snapshot().ok()))
        .collect();

    let timed_out = AtomicBool::new(false);
    let shared = Shared {
        mem,
        monitor: vm.monitor(),
        mmu,
        kicks,
        timed_out: &timed_out,
        timeout_ms: config.timeout.as_millis() as u64,
    };
    // Planned here, applied by each vCPU thread to itself as it starts.
    let pin_plan = if config.pin {
        Some(crate::pin::plan(n)?)
    } else {
        None
    };
    let pin_plan = pin_plan.as_ref();
    let start = Instant::now();
    let reports = std::thread::scope(|s| -> Result<Vec<VcpuReport>, KvmError> {
        let (tx, rx) = mpsc::channel::<usize>();
        let mut handles = Vec::with_capacity(n);
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            let tx = tx.clone();
            let shared = &shared;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn_scoped(s, move || {
                    let r = run_vcpu(vcpu, shared, pin_plan);
                    let _ = tx.send(i);
                    r
                })
                .map_err(|source| KvmError::SpawnThread { vcpu: i, source });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    make_all_cpus_request(kicks, REQ_STOP, None);
                    return Err(e);
                }
            }
        }
        drop(tx);
        // The watchdog: wait for every vCPU until the deadline, then stop the rest.
        let deadline = start + config.timeout;
        let mut finished = 0;
        while finished < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(_) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out.store(true, Ordering::Release);
                    make_all_cpus_request(kicks, REQ_STOP, None);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut reports = Vec::with_capacity(n);
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => reports.push(r?),
                Err(_) => return Err(KvmError::VcpuThreadPanicked(i)),
            }
        }
        Ok(reports)
    })?;
    let elapsed = start.elapsed();

    let mut kvm_vm_stats = stats::Snapshot::new();
    if let (Some(s), Some(before)) = (&vm_stats, &vm_before) {
        if let Ok(after) = s.snapshot() {
            kvm_vm_stats = s.delta(before, &after);
        }
    }
    let mut kvm_vcpu_stats = stats::Snapshot::new();
    for (s, before) in vcpu_stats.iter().zip(&vcpu_before) {
        if let (Some(s), Some(before)) = (s, before) {
            if let Ok(after) = s.snapshot() {
                stats::accumulate(&mut kvm_vcpu_stats, &s.delta(before, &after));
            }
        }
    }
    Ok(RunResult {
        backend: match mode {
            GuestMode::Native => "native",
            GuestMode::Shadow => "kvm",
        },
        nr_vcpus: n,
        host_cpus: std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1),
        elapsed_ns: elapsed.as_nanos() as u64,
        kvm_vm_stats,
        kvm_vcpu_stats,
        pinning: pin_plan.map(|p| {
            let mut filled = p.unfilled();
            for r in &reports {
                filled.map[r.vcpu] = r.pinned_cpu;
            }
            filled
        }),
        vcpus: reports,
        mmu_stats: None,
        host_flushes: None,
        host_coherence: None,
    })
}
