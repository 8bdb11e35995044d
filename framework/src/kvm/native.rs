//! The `native` backend: the guest on its own page tables, loaded into CR3 directly, so that
//! the host kernel's MMU does the shadowing.

use shadowlab_abi::GuestMode;

use super::boot::{self, GuestParams};
use super::config::{HypercallPath, RunConfig};
use super::elf::ElfImage;
use super::error::KvmError;
use super::guest_image::GUEST_ELF;
use super::hooks::{MmuHooks, NativeMmu};
use super::kick::{self, VcpuKick};
use super::report::RunResult;
use super::run::{first_failure, run_vm, RunParts};
use super::vm::Vm;

/// Runs the guest in `native` mode: its own page tables in CR3, the host's MMU doing the
/// shadowing. `Ok` only if every vCPU reported DONE; a guest failure is
/// [`KvmError::GuestFailed`] with the first failing vCPU's report (assert file/line/message,
/// exception, triple fault, timeout), registers and last message.
pub fn run_native(config: &RunConfig, params: &GuestParams) -> Result<RunResult, KvmError> {
    let result = run_native_reports(config, params)?;
    first_failure(&result)?;
    Ok(result)
}

/// Like [`run_native`] but returns the reports even when vCPUs failed.
pub fn run_native_reports(config: &RunConfig, params: &GuestParams) -> Result<RunResult, KvmError> {
    let kicks = kick::new_kicks(config.nr_vcpus);
    run_native_with(config, params, &NativeMmu, &kicks)
}

/// The guest on its own page tables with a caller's MMU hooks and kick state (`kicks[i]` is
/// vCPU `i`'s; the hooks may hold them to request remote TLB flushes). Returns the reports
/// even when vCPUs failed.
pub fn run_native_with<H: MmuHooks + ?Sized>(
    config: &RunConfig,
    params: &GuestParams,
    mmu: &H,
    kicks: &[VcpuKick],
) -> Result<RunResult, KvmError> {
    let vm = Vm::new(config.ram_size, config.nr_vcpus)?;
    let image = ElfImage::parse(GUEST_ELF)?;
    let mmio = config.hypercall.resolve() == HypercallPath::Mmio;
    let plan = boot::prepare(
        vm.ram(),
        &image,
        config.nr_vcpus,
        GuestMode::Native,
        params,
        mmio,
    )?;
    let roots: Vec<u64> = plan.vcpus.iter().map(|v| v.boot_root).collect();
    let parts = RunParts {
        cr3s: &roots,
        mem: vm.ram(),
        mmu,
        kicks,
        mode: GuestMode::Native,
    };
    run_vm(&vm, config, &plan, parts)
}
