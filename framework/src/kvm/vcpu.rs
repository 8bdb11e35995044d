//! One vCPU's thread: KVM_RUN, decode the exit, hand it to [`handle_exit`], act on the answer;
//! requests (remote TLB flush, stop) are checked before every entry.

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::VcpuExit;
use shadowlab_abi::layout::DIRECT_MAP_BASE;
use shadowlab_abi::{EXCEPTION_PORT, HYPERCALL_MMIO_GPA, NOP_PORT, UCALL_PORT};

use super::emulate::Gprs;
use super::error::KvmError;
use super::exit::{complete_emulation, handle_exit, DecodedExit, ExitAction, ExitState};
use super::hooks::{GuestContext, HookError, MmuHooks};
use super::kick::{make_all_cpus_request, VcpuKick, REQ_STOP, REQ_TLB_FLUSH};
use super::monitor;
use super::report::{FailureKind, FaultTiming, GuestFailure, GuestRegs, VcpuReport};
use super::vcpu_fd::Vcpu;
use crate::measure::shadowlab_measured_region;
use crate::mem::GuestPhys;
use crate::mem::MemRegion;
use crate::perf::ThreadCounters;

/// What every vCPU thread of a run shares.
pub struct Shared<'a, M: ?Sized, H: ?Sized> {
    /// Guest RAM as the exit handler sees it.
    pub mem: &'a M,
    /// The monitor (exception frames are read from it).
    pub monitor: &'a MemRegion,
    /// The MMU.
    pub mmu: &'a H,
    /// Every vCPU's kick state, by index.
    pub kicks: &'a [VcpuKick],
    /// Set by the watchdog before it stops the vCPUs.
    pub timed_out: &'a AtomicBool,
    /// The watchdog's limit, for the report.
    pub timeout_ms: u64,
}

fn decode(exit: VcpuExit<'_>) -> DecodedExit {
    match exit {
        VcpuExit::IoOut(port, data) => {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            DecodedExit::IoOut {
                port,
                size: data.len().min(255) as u8,
                value: u32::from_le_bytes(v),
            }
        }
        VcpuExit::IoIn(port, data) => DecodedExit::IoIn {
            port,
            size: data.len().min(255) as u8,
        },
        VcpuExit::Hlt => DecodedExit::Hlt,
        VcpuExit::Shutdown => DecodedExit::Shutdown,
        VcpuExit::InternalError => DecodedExit::InternalError { suberror: 0 },
        VcpuExit::FailEntry(reason, _) => DecodedExit::FailEntry { reason },
        VcpuExit::MmioRead(gpa, _) => DecodedExit::Mmio { gpa, write: false },
        VcpuExit::MmioWrite(gpa, data)
            if (HYPERCALL_MMIO_GPA..HYPERCALL_MMIO_GPA + 0x1000).contains(&gpa)
                && data.len() == 4 =>
        {
            // A hypercall through the MMIO window: the offset is the port.
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            DecodedExit::IoOut {
                port: (gpa - HYPERCALL_MMIO_GPA) as u16,
                size: 4,
                value,
            }
        }
        VcpuExit::MmioWrite(gpa, _) => DecodedExit::Mmio { gpa, write: true },
        other => DecodedExit::Other(format!("{other:?}")),
    }
}

/// Up to 15 instruction bytes at `rip`, read through the direct map (the guest runs code only
/// from there); fewer (possibly none) at the end of guest RAM or outside the direct map, which
/// the decoder then reports as undecodable.
pub fn fetch_insn<M: GuestPhys + ?Sized>(mem: &M, rip: u64) -> Vec<u8> {
    let Some(gpa) = rip.checked_sub(DIRECT_MAP_BASE) else {
        return Vec::new();
    };
    let n = mem.ram_size().saturating_sub(gpa).min(15) as usize;
    let mut buf = vec![0u8; n];
    if mem.read(gpa, &mut buf).is_err() {
        buf.clear();
    }
    buf
}

/// If `frame` is a #GP the guest took on its own `out dx, eax` / `out imm8, eax` to a hypercall
/// port at CPL3, returns the port and the RIP after the instruction.
///
/// Why: the guest runs at CPL3 with IOPL=3, and on a host that honours IOPL its `out` exits
/// directly; on this one a CPL3 `out` raises #GP ([host notes](super#this-host)), so the
/// monitor reports the #GP and the VMM emulates the `out` from the frame: the stub saved RAX and
/// RDX, the instruction bytes are read from guest RAM through the direct map (the guest only
/// runs code from there). Anything else stays a #GP.
pub fn refused_out<M: GuestPhys + ?Sized>(
    mem: &M,
    frame: &monitor::ExceptionFrame,
) -> Option<(u16, u64)> {
    if frame.vector != 13 || frame.error_code != 0 || frame.cs & 3 != 3 {
        return None;
    }
    let gpa = frame.rip.checked_sub(DIRECT_MAP_BASE)?;
    let mut insn = [0u8; 2];
    if gpa.checked_add(2)? > mem.ram_size() {
        return None;
    }
    mem.read(gpa, &mut insn).ok()?;
    let (port, len) = match insn {
        [0xef, _] => (frame.rdx as u16, 1),
        [0xe7, imm] => (u16::from(imm), 2),
        _ => return None,
    };
    matches!(port, UCALL_PORT | NOP_PORT).then_some((port, frame.rip + len))
}

/// The vCPU as [`GuestContext`]: runs monitor code on it between two guest entries.
struct MonitorContext<'a> {
    vcpu: &'a mut Vcpu,
    monitor: &'a MemRegion,
    kick: &'a VcpuKick,
    /// Replays entered by hand ([`run_replay_by_hand`]), counted into the vCPU's exits.
    by_hand: u64,
    /// The vCPU is parked at the replay routine's completion exit (no KVM_RUN since): the
    /// vCPU loop clears it before every guest entry.
    parked: &'a mut bool,
}

impl GuestContext for MonitorContext<'_> {
    fn replay_sptes(
        &mut self,
        vas: &[u64],
        cr3: Option<u64>,
        by_hand: bool,
    ) -> Result<(), HookError> {
        let mut cr3 = cr3;
        let mut chunks = vas.chunks(monitor::REPLAY_CAPACITY).peekable();
        if chunks.peek().is_none() {
            return run_replay(self, &[], cr3, by_hand);
        }
        for chunk in chunks {
            run_replay(self, chunk, cr3.take(), by_hand)?;
        }
        Ok(())
    }
}

/// One round of the monitor's replay routine over `vas` (at most `REPLAY_CAPACITY`), on
/// hardware CR3 `cr3` if given. Returns at the routine's completion exit: the vCPU is then
/// parked inside the routine, which returns to the interrupted context (`iretq`) when the
/// vCPU next runs, or takes another round if one is written first.
///
/// Entry: the VMM injects [`monitor::REPLAY_VECTOR`] (KVM_SET_VCPU_EVENTS), so the CPU itself
/// saves the interrupted context (CPL3 guest code, or a monitor stub between its `out` and
/// its `iretq`: the gate's IST2 leaves the stub's IST1 frame alone) and the routine returns to
/// it. Only if another event is already on its way into the guest (a kick can stop the vCPU
/// between the host queueing a #PF and delivering it) does the VMM enter the routine by hand
/// ([`run_replay_by_hand`]).
fn run_replay(
    ctx: &mut MonitorContext<'_>,
    vas: &[u64],
    cr3: Option<u64>,
    by_hand: bool,
) -> Result<(), HookError> {
    let index = ctx.vcpu.index();
    if let Some(cr3) = cr3 {
        ctx.vcpu.set_cr3(cr3)?;
    }
    monitor::write_replay(ctx.monitor, index, vas)?;
    // Parked at the completion exit of the previous round (no KVM_RUN since): the routine
    // re-reads the count when resumed. Otherwise enter it (again: nesting is safe).
    if !std::mem::take(ctx.parked) {
        let mut events = ctx.vcpu.get_vcpu_events()?;
        if by_hand || event_in_flight(&events) {
            return run_replay_by_hand(ctx, events);
        }
        events.exception.injected = 1;
        events.exception.nr = monitor::REPLAY_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        ctx.vcpu.set_vcpu_events(&events)?;
    }
    run_until_replay_done(ctx)?;
    monitor::finish_replay(ctx.monitor, index)?;
    *ctx.parked = true;
    Ok(())
}

/// Whether an exception, interrupt or NMI is already being delivered to the guest.
fn event_in_flight(e: &kvm_bindings::kvm_vcpu_events) -> bool {
    e.exception.injected != 0
        || e.exception.pending != 0
        || e.interrupt.injected != 0
        || e.nmi.injected != 0
}

/// KVM_RUN until the replay routine's completion exit (kicks meanwhile are retried: their
/// requests are handled before the next guest entry).
fn run_until_replay_done(ctx: &mut MonitorContext<'_>) -> Result<(), HookError> {
    let vcpu = ctx.vcpu.index();
    loop {
        match ctx.vcpu.run()? {
            Some(VcpuExit::IoOut(monitor::REPLAY_DONE_PORT, _)) => return Ok(()),
            Some(other) => {
                return Err(HookError::ReplayStopped {
                    vcpu,
                    exit: format!("{other:?}"),
                })
            }
            None => ctx.kick.clear_immediate_exit(),
        }
    }
}

/// The replay routine entered by hand, for when an event is in flight (`events`): the
/// interrupted context is saved with KVM_GET_REGS/SREGS, the event set aside, the vCPU put at
/// the routine's entry at CPL0 on a stack in the middle of its IST page, and after the
/// completion exit everything is put back (the routine's own `iretq` is not used). Before registers may be changed, the exit
/// the vCPU is in must be completed: KVM finishes an `out` (skipping it) or an MMIO store at
/// the next KVM_RUN, which a KVM_RUN with `immediate_exit` does (KVM's API documentation).
fn run_replay_by_hand(
    ctx: &mut MonitorContext<'_>,
    events: kvm_bindings::kvm_vcpu_events,
) -> Result<(), HookError> {
    let vcpu = ctx.vcpu.index();
    ctx.kick.set_immediate_exit();
    let completed = ctx.vcpu.run();
    ctx.kick.clear_immediate_exit();
    if let Some(other) = completed? {
        return Err(HookError::ReplayStopped {
            vcpu,
            exit: format!("{other:?} while completing the previous exit"),
        });
    }
    let mut quiet = events;
    quiet.exception.injected = 0;
    quiet.exception.pending = 0;
    quiet.interrupt.injected = 0;
    quiet.nmi.injected = 0;
    ctx.vcpu.set_vcpu_events(&quiet)?;
    let regs = ctx.vcpu.get_regs()?;
    let sregs = ctx.vcpu.get_sregs()?;
    let mut r = regs;
    r.rip = monitor::replay_entry();
    r.rsp = shadowlab_abi::layout::MONITOR_BASE + monitor::hand_stack_top_off(vcpu);
    r.rflags = 0x2;
    let mut s = sregs;
    // The monitor's flat 64-bit kernel code and data segments (as `monitor`'s GDT has them).
    s.cs = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: monitor::CODE_SEL,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    s.ss = kvm_bindings::kvm_segment {
        selector: monitor::DATA_SEL,
        type_: 0x3,
        db: 1,
        l: 0,
        ..s.cs
    };
    ctx.vcpu.set_sregs(&s)?;
    ctx.vcpu.set_regs(&r)?;
    run_until_replay_done(ctx)?;
    ctx.vcpu.set_sregs(&sregs)?;
    ctx.vcpu.set_regs(&regs)?;
    ctx.vcpu.set_vcpu_events(&events)?;
    // The routine never reaches its own exit path: the vCPU is back where it was.
    monitor::finish_replay(ctx.monitor, vcpu)?;
    ctx.by_hand += 1;
    Ok(())
}

fn regs_of(vcpu: &Vcpu) -> Option<GuestRegs> {
    let r = vcpu.get_regs().ok()?;
    let s = vcpu.get_sregs().ok()?;
    Some(GuestRegs::from_kvm(&r, &s))
}

/// Runs `vcpu` until DONE, a failure, or a stop request; the vCPU fd is dropped at the end.
pub fn run_vcpu<M, H>(
    mut vcpu: Vcpu,
    sh: &Shared<'_, M, H>,
    pin: Option<&crate::pin::Pinning>,
) -> Result<VcpuReport, KvmError>
where
    M: GuestPhys + ?Sized,
    H: MmuHooks + ?Sized,
{
    let index = vcpu.index();
    // Pinned before it touches guest memory, so its pages and caches are local to that CPU.
    let pinned_cpu = pin.map(|p| crate::pin::pin_vcpu(p, index)).transpose()?;
    let kick = &sh.kicks[index];
    let immediate_exit = vcpu.immediate_exit_ptr();
    // SAFETY: the kvm_run mapping lives as long as `vcpu`, which outlives the registration
    // (unregistered below before `vcpu` is dropped); this thread runs the vCPU.
    unsafe { kick.register(immediate_exit) };
    // This thread's counters around the guest's run (KVM_RUN included: kernel time counts).
    let mut counters = ThreadCounters::open();
    counters.start();
    let result = shadowlab_measured_region(|| vcpu_loop(&mut vcpu, sh));
    let perf = counters.stop();
    kick.unregister();
    let (st, outcome) = result?;
    if outcome.is_err() {
        // A failed vCPU may leave the others waiting for it forever: stop them.
        make_all_cpus_request(sh.kicks, REQ_STOP, Some(index));
    }
    Ok(VcpuReport {
        vcpu: index,
        outcome,
        exits: st.exits,
        syncs: st.syncs,
        prints: st.prints,
        fault_handling: FaultTiming::of(st.fault_ns),
        perf,
        pinned_cpu,
    })
}

type LoopResult = Result<(ExitState, Result<super::report::Done, GuestFailure>), KvmError>;

fn vcpu_loop<M, H>(vcpu: &mut Vcpu, sh: &Shared<'_, M, H>) -> LoopResult
where
    M: GuestPhys + ?Sized,
    H: MmuHooks + ?Sized,
{
    let mut st = ExitState::new(vcpu.index());
    loop {
        if let Some(outcome) = step(vcpu, sh, &mut st)? {
            return Ok((st, outcome));
        }
    }
}

/// The outcome of a vCPU that stopped: DONE or its failure.
pub type Outcome = Result<super::report::Done, GuestFailure>;

/// One round of the vCPU loop: pending requests, one KVM_RUN, the exit decoded and handled.
/// `Ok(None)`: re-enter. Public so that a benchmark can drive the real VMM path exit by exit.
pub fn step<M, H>(
    vcpu: &mut Vcpu,
    sh: &Shared<'_, M, H>,
    st: &mut ExitState,
) -> Result<Option<Outcome>, KvmError>
where
    M: GuestPhys + ?Sized,
    H: MmuHooks + ?Sized,
{
    let index = vcpu.index();
    let kick = &sh.kicks[index];
    let fail = |st: &ExitState, vcpu: &Vcpu, kind: FailureKind| GuestFailure {
        kind,
        regs: regs_of(vcpu),
        last_message: st.last_message.clone(),
    };
    if kick.check_request(REQ_STOP) {
        let kind = if sh.timed_out.load(Ordering::Acquire) {
            FailureKind::Timeout {
                millis: sh.timeout_ms,
            }
        } else {
            FailureKind::Stopped("another vCPU failed".into())
        };
        return Ok(Some(Err(fail(st, vcpu, kind))));
    }
    if kick.check_request(REQ_TLB_FLUSH) {
        match sh.mmu.flush_before_entry(index) {
            Ok(Some(cr3)) => vcpu.set_cr3(cr3)?,
            Ok(None) => {}
            Err(e) => return Ok(Some(Err(fail(st, vcpu, FailureKind::Mmu(e.into()))))),
        }
    }
    let mut ctx = MonitorContext {
        vcpu,
        monitor: sh.monitor,
        kick,
        by_hand: 0,
        parked: &mut st.replay_parked,
    };
    let entry = sh.mmu.before_entry(index, &mut ctx);
    let by_hand = ctx.by_hand;
    st.exits.replay_by_hand += by_hand;
    match entry {
        Ok(Some(cr3)) => vcpu.set_cr3(cr3)?,
        Ok(None) => {}
        Err(e) => return Ok(Some(Err(fail(st, vcpu, FailureKind::Mmu(e.into()))))),
    }
    // Whatever this run does, a parked replay routine may resume (and return to the guest).
    st.replay_parked = false;
    let ran = vcpu.run();
    sh.mmu.after_exit(index);
    let decoded = match ran? {
        Some(exit) => decode(exit),
        None => {
            st.exits.kicked += 1;
            kick.clear_immediate_exit();
            return Ok(None);
        }
    };
    let mut refused_out_next_rip = None;
    let decoded = match decoded {
        DecodedExit::IoOut {
            port: EXCEPTION_PORT,
            ..
        } => {
            let frame = monitor::read_frame(sh.monitor, index)?;
            if let Some((port, next_rip)) = refused_out(sh.mem, &frame) {
                st.exits.emulated_out += 1;
                refused_out_next_rip = Some(next_rip);
                DecodedExit::IoOut {
                    port,
                    size: 4,
                    value: frame.rax as u32,
                }
            } else {
                let cr2 = vcpu.get_sregs()?.cr2;
                DecodedExit::Exception { frame, cr2 }
            }
        }
        DecodedExit::InternalError { .. } => DecodedExit::InternalError {
            suberror: vcpu.internal_error_suberror().unwrap_or(0),
        },
        d => d,
    };
    let is_pf = matches!(decoded, DecodedExit::Exception { frame, .. } if frame.vector == super::exit::PF_VECTOR);
    let t0 = is_pf.then(std::time::Instant::now);
    let action = handle_exit(st, decoded, sh.mem, sh.mmu);
    if let Some(t0) = t0 {
        st.fault_ns
            .push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    if let (
        Some(rip),
        ExitAction::Resume | ExitAction::ResumeSetCr3(_) | ExitAction::ResumeRejectAddress,
    ) = (refused_out_next_rip, &action)
    {
        // The `out` was emulated: the stub's iretq returns past it.
        monitor::set_frame_rip(sh.monitor, index, rip)?;
    }
    match action {
        ExitAction::Resume => {}
        ExitAction::ResumeSetCr3(cr3) => vcpu.set_cr3(cr3)?,
        ExitAction::ResumeRejectAddress if refused_out_next_rip.is_some() => {
            monitor::set_frame_rax(sh.monitor, index, u64::from(u32::MAX))?;
        }
        ExitAction::ResumeRejectAddress => {
            let mut r = vcpu.get_regs()?;
            r.rax = u64::from(u32::MAX);
            vcpu.set_regs(&r)?;
        }
        ExitAction::EmulateStore { gpa, frame } => {
            let regs = vcpu.get_regs()?;
            let gprs = Gprs::at_fault(&regs, &frame);
            let insn = fetch_insn(sh.mem, frame.rip);
            match complete_emulation(st, gpa, &frame, &insn, &gprs, sh.mmu) {
                Ok(next_rip) => monitor::set_frame_rip(sh.monitor, index, next_rip)?,
                Err(kind) => return Ok(Some(Err(fail(st, vcpu, kind)))),
            }
        }
        ExitAction::Stop(Ok(done)) => return Ok(Some(Ok(done))),
        ExitAction::Stop(Err(kind)) => {
            return Ok(Some(Err(fail(st, vcpu, kind))));
        }
    }
    Ok(None)
}
