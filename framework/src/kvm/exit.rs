//! The exit handler: a plain function from a decoded exit and the vCPU's exit state to what the
//! vCPU loop does next. It touches no file descriptor, so it is unit-tested without a guest.

use shadowlab_abi::{status, NOP_PORT, UCALL_PORT};

use super::emulate::{decode_store, Gprs};
use super::hooks::{MmuHooks, PfAction};
use super::monitor::ExceptionFrame;
use super::report::{Done, ExitCounts, FailureKind};
use super::ucall::{self, Ucall, UcallError};
use crate::mem::GuestPhys;
use crate::mem::MemError;
use shadowlab_workloads::{Report, ReportWordsError};

/// Page-fault vector.
pub const PF_VECTOR: u64 = 14;

/// A KVM exit, decoded by the vCPU loop (which also reads the exception frame and CR2 for an
/// exception report, since that needs the vCPU fd and the monitor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodedExit {
    /// `out` to `port` of `size` bytes of `value`.
    IoOut {
        /// Port.
        port: u16,
        /// Access size in bytes.
        size: u8,
        /// The value (zero-extended).
        value: u32,
    },
    /// `in` from `port`.
    IoIn {
        /// Port.
        port: u16,
        /// Access size in bytes.
        size: u8,
    },
    /// The monitor reported an exception.
    Exception {
        /// The stub's frame.
        frame: ExceptionFrame,
        /// CR2.
        cr2: u64,
    },
    /// KVM_EXIT_HLT.
    Hlt,
    /// KVM_EXIT_SHUTDOWN.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// Suberror.
        suberror: u32,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// An MMIO access (no device lives anywhere).
    Mmio {
        /// Guest-physical address.
        gpa: u64,
        /// Write?
        write: bool,
    },
    /// Anything else, described.
    Other(String),
}

/// What the vCPU loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Resume,
    /// Put this value into the hardware CR3, then re-enter.
    ResumeSetCr3(u64),
    /// The ucall's message address was refused: set RAX to `u32::MAX` (the guest's "rejected"
    /// signal), then re-enter.
    ResumeRejectAddress,
    /// Emulate the store at the fault's RIP to guest-physical `gpa`: the vCPU loop fetches
    /// the instruction and the registers and finishes with [`complete_emulation`].
    EmulateStore {
        /// Target of the store.
        gpa: u64,
        /// The exception frame (RIP, RAX/RDX as the guest had them).
        frame: ExceptionFrame,
    },
    /// Stop this vCPU: DONE or a failure.
    Stop(Result<Done, FailureKind>),
}

/// Per-vCPU state the handler updates.
#[derive(Clone, Debug, Default)]
pub struct ExitState {
    /// vCPU index.
    pub vcpu: usize,
    /// Exits by reason.
    pub exits: ExitCounts,
    /// SYNC checkpoints.
    pub syncs: Vec<(u64, u64)>,
    /// PRINTF output.
    pub prints: Vec<String>,
    /// The last SYNC/PRINTF, for failure reports.
    pub last_message: Option<String>,
    /// VMM-side time of each guest #PF handled (from the decoded exit to the action, not
    /// counting the exit itself), in ns.
    pub fault_ns: Vec<u32>,
    /// The vCPU is parked at the monitor's replay routine's completion exit (`kvm::vcpu`).
    pub replay_parked: bool,
}

impl ExitState {
    /// Fresh state of vCPU `vcpu`.
    pub fn new(vcpu: usize) -> Self {
        Self {
            vcpu,
            ..Self::default()
        }
    }
}

/// Handles one exit.
pub fn handle_exit<M, H>(st: &mut ExitState, exit: DecodedExit, mem: &M, mmu: &H) -> ExitAction
where
    M: GuestPhys + ?Sized,
    H: MmuHooks + ?Sized,
{
    match exit {
        DecodedExit::IoOut { port: NOP_PORT, .. } => {
            st.exits.nop += 1;
            ExitAction::Resume
        }
        DecodedExit::IoOut {
            port: UCALL_PORT,
            size: 4,
            value,
        } => {
            st.exits.ucall += 1;
            handle_ucall(st, u64::from(value), mem, mmu)
        }
        DecodedExit::Exception { frame, cr2 } => {
            st.exits.exception += 1;
            if frame.vector == PF_VECTOR {
                match mmu.page_fault(st.vcpu, cr2, frame.error_code) {
                    Ok(PfAction::Fixed) => {
                        st.exits.page_fault_fixed += 1;
                        return ExitAction::Resume;
                    }
                    Ok(PfAction::Emulate { gpa }) => {
                        return ExitAction::EmulateStore { gpa, frame }
                    }
                    Ok(PfAction::GuestFault) => {}
                    Err(e) => return ExitAction::Stop(Err(FailureKind::Mmu(e.into()))),
                }
            }
            ExitAction::Stop(Err(FailureKind::Exception { frame, cr2 }))
        }
        DecodedExit::Shutdown => ExitAction::Stop(Err(FailureKind::TripleFault)),
        DecodedExit::InternalError { suberror } => {
            ExitAction::Stop(Err(FailureKind::InternalError { suberror }))
        }
        DecodedExit::FailEntry { reason } => {
            ExitAction::Stop(Err(FailureKind::FailEntry { reason }))
        }
        other => {
            st.exits.other += 1;
            let what = match other {
                DecodedExit::IoOut { port, size, value } => {
                    format!("out of {size} bytes ({value:#x}) to port {port:#x}")
                }
                DecodedExit::IoIn { port, size } => {
                    format!("in of {size} bytes from port {port:#x}")
                }
                DecodedExit::Hlt => "HLT before GUEST_DONE".to_string(),
                DecodedExit::Mmio { gpa, write } => {
                    format!(
                        "MMIO {} at gpa {gpa:#x} (no memslot there)",
                        if write { "write" } else { "read" }
                    )
                }
                DecodedExit::Other(s) => s,
                _ => unreachable!("handled above"),
            };
            ExitAction::Stop(Err(FailureKind::UnexpectedExit(what)))
        }
    }
}

/// Finishes an [`ExitAction::EmulateStore`]: decodes the faulting instruction from `insn`
/// (bytes fetched at the frame's RIP) with the guest's registers, hands the store to the MMU,
/// and returns the RIP to resume at. Anything but a MOV-family store, or an MMU error, stops
/// the vCPU with a report naming the instruction's bytes.
pub fn complete_emulation<H: MmuHooks + ?Sized>(
    st: &mut ExitState,
    gpa: u64,
    frame: &ExceptionFrame,
    insn: &[u8],
    gprs: &Gprs,
    mmu: &H,
) -> Result<u64, FailureKind> {
    let store = decode_store(frame.rip, insn, gprs).map_err(FailureKind::Emulation)?;
    mmu.emulated_write(st.vcpu, gpa, store.value, store.len)
        .map_err(|e| FailureKind::Mmu(e.into()))?;
    st.exits.emulated_write += 1;
    Ok(frame.rip + store.insn_len as u64)
}

/// Why the report block of a DONE was refused (the guest's DONE gets `BAD_ARGUMENT`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportBlockError {
    /// Not exactly one block, 8-byte aligned, inside guest RAM.
    #[error("report block of {len} bytes at gpa {gpa:#x} is not one aligned block in guest RAM")]
    Misplaced {
        /// Where the guest said it is.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// Reading it from guest memory failed.
    #[error("reading the report block: {0}")]
    Memory(#[from] MemError),
    /// Its words are not a report (an inconsistent latency histogram).
    #[error(transparent)]
    Malformed(#[from] ReportWordsError),
}

/// Reads the workload report block of a DONE (`len` 0: none). Refused unless it is exactly
/// one block, 8-byte aligned, inside guest RAM.
fn read_report<M: GuestPhys + ?Sized>(
    mem: &M,
    gpa: u64,
    len: u64,
) -> Result<Option<Box<Report>>, ReportBlockError> {
    use shadowlab_abi::report_words::TOTAL;
    if len == 0 {
        return Ok(None);
    }
    let misplaced = ReportBlockError::Misplaced { gpa, len };
    if len != (TOTAL * 8) as u64
        || gpa % 8 != 0
        || gpa.checked_add(len).is_none_or(|e| e > mem.ram_size())
    {
        return Err(misplaced);
    }
    let mut bytes = vec![0u8; TOTAL * 8];
    mem.read(gpa, &mut bytes)?;
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok(Some(Box::new(Report::from_words(&words)?)))
}

fn handle_ucall<M, H>(st: &mut ExitState, gpa: u64, mem: &M, mmu: &H) -> ExitAction
where
    M: GuestPhys + ?Sized,
    H: MmuHooks + ?Sized,
{
    let reply = |status: u64| -> ExitAction {
        match ucall::write_status(mem, gpa, status) {
            Ok(()) => ExitAction::Resume,
            Err(e) => ExitAction::Stop(Err(FailureKind::UnexpectedExit(format!(
                "writing ucall status: {e}"
            )))),
        }
    };
    let call = match ucall::read(mem, gpa) {
        Ok(c) => c,
        Err(e) => {
            st.exits.ucall_rejected += 1;
            return match (e.status(), &e) {
                (None, UcallError::BadAddress(_)) => ExitAction::ResumeRejectAddress,
                (Some(s), _) => reply(s),
                (None, _) => ExitAction::ResumeRejectAddress,
            };
        }
    };
    match call {
        Ucall::None => reply(status::OK),
        Ucall::Sync { stage, value } => {
            st.syncs.push((stage, value));
            st.last_message = Some(format!("GUEST_SYNC({stage}, {value:#x})"));
            reply(status::OK)
        }
        Ucall::Printf(text) => {
            st.last_message = Some(text.clone());
            st.prints.push(text);
            reply(status::OK)
        }
        Ucall::Abort {
            file,
            line,
            message,
        } => ExitAction::Stop(Err(FailureKind::Assert {
            file,
            line,
            message,
        })),
        Ucall::Done(args) => {
            use shadowlab_abi::done_args;
            let report = match read_report(
                mem,
                args[done_args::REPORT_GPA],
                args[done_args::REPORT_LEN],
            ) {
                Ok(r) => r,
                Err(_) => {
                    st.exits.ucall_rejected += 1;
                    return reply(status::BAD_ARGUMENT);
                }
            };
            ExitAction::Stop(Ok(Done {
                ops: args[done_args::OPS],
                tsc_start: args[done_args::TSC_START],
                tsc_end: args[done_args::TSC_END],
                args,
                report,
            }))
        }
        Ucall::LoadCr3(root) => {
            st.exits.mmu_hypercall += 1;
            match mmu.load_cr3(st.vcpu, root) {
                Ok(Some(cr3)) => match reply(status::OK) {
                    ExitAction::Resume => ExitAction::ResumeSetCr3(cr3),
                    other => other,
                },
                Ok(None) => reply(status::UNSUPPORTED),
                Err(e) => ExitAction::Stop(Err(FailureKind::Mmu(e.into()))),
            }
        }
        Ucall::Invlpg(gva) => {
            st.exits.mmu_hypercall += 1;
            match mmu.invlpg(st.vcpu, gva) {
                Ok(true) => reply(status::OK),
                Ok(false) => reply(status::UNSUPPORTED),
                Err(e) => ExitAction::Stop(Err(FailureKind::Mmu(e.into()))),
            }
        }
        Ucall::FlushTlb => {
            st.exits.mmu_hypercall += 1;
            match mmu.flush_tlb(st.vcpu) {
                Ok(true) => reply(status::OK),
                Ok(false) => reply(status::UNSUPPORTED),
                Err(e) => ExitAction::Stop(Err(FailureKind::Mmu(e.into()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::kvm::hooks::{HookError, NativeMmu};
    use crate::kvm::hostmem::new_region;
    use crate::kvm::ucall::tests::put;
    use crate::mem::MemRegion;
    use crate::mmu::MmuError;
    use shadowlab_abi::{UcallCmd, EXCEPTION_PORT, UCALL_OFF_RET};

    /// Records MMU calls; fixes faults below 0x1000_0000.
    #[derive(Default)]
    struct FakeMmu {
        calls: Mutex<Vec<String>>,
    }
    impl MmuHooks for FakeMmu {
        fn page_fault(&self, vcpu: usize, gva: u64, ec: u64) -> Result<PfAction, HookError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("pf {vcpu} {gva:#x} {ec}"));
            Ok(if gva < 0x1000_0000 {
                PfAction::Fixed
            } else {
                PfAction::GuestFault
            })
        }
        fn load_cr3(&self, vcpu: usize, root: u64) -> Result<Option<u64>, HookError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("cr3 {vcpu} {root:#x}"));
            Ok(Some(0x2_0000_0000 + root))
        }
        fn invlpg(&self, _: usize, gva: u64) -> Result<bool, HookError> {
            self.calls.lock().unwrap().push(format!("invlpg {gva:#x}"));
            Ok(true)
        }
        fn flush_tlb(&self, _: usize) -> Result<bool, HookError> {
            Err(HookError::Mmu(MmuError::PoolExhausted {
                pool: 64,
                free: 0,
            }))
        }
        fn emulated_write(&self, _: usize, _: u64, _: u64, _: u8) -> Result<(), HookError> {
            Ok(())
        }
        fn flush_before_entry(&self, _: usize) -> Result<Option<u64>, HookError> {
            Ok(None)
        }
    }

    fn ram() -> MemRegion {
        new_region(1 << 20).unwrap()
    }

    /// Places a ucall with no text at 0x4000 and handles its exit.
    fn ucall<H: MmuHooks + ?Sized>(
        st: &mut ExitState,
        ram: &MemRegion,
        mmu: &H,
        cmd: u64,
        args: [u64; 6],
    ) -> ExitAction {
        put(ram, 0x4000, cmd, args, b"", 0);
        handle_exit(st, ucall_exit(0x4000), ram, mmu)
    }

    /// The status the VMM wrote back into the ucall at 0x4000.
    fn ucall_status(ram: &MemRegion) -> u64 {
        ram.read_u64(0x4000 + UCALL_OFF_RET).unwrap()
    }

    fn ucall_exit(gpa: u32) -> DecodedExit {
        DecodedExit::IoOut {
            port: UCALL_PORT,
            size: 4,
            value: gpa,
        }
    }

    #[test]
    fn nop_and_sync_resume_and_are_counted() {
        let ram = ram();
        let mut st = ExitState::new(0);
        assert_eq!(
            handle_exit(
                &mut st,
                DecodedExit::IoOut {
                    port: NOP_PORT,
                    size: 4,
                    value: 0
                },
                &ram,
                &NativeMmu
            ),
            ExitAction::Resume
        );
        assert_eq!(
            ucall(
                &mut st,
                &ram,
                &NativeMmu,
                UcallCmd::Sync as u64,
                [3, 9, 0, 0, 0, 0]
            ),
            ExitAction::Resume
        );
        assert_eq!(ucall_status(&ram), status::OK);
        assert_eq!((st.exits.nop, st.exits.ucall), (1, 1));
        assert_eq!(st.syncs, vec![(3, 9)]);
        assert!(st.last_message.as_deref().unwrap().contains("GUEST_SYNC(3"));
    }

    #[test]
    fn done_and_assert_stop_the_vcpu() {
        let ram = ram();
        let mut st = ExitState::new(1);
        put(
            &ram,
            0x4000,
            UcallCmd::Done as u64,
            [100, 5, 9, 0, 0, 0],
            b"",
            0,
        );
        match handle_exit(&mut st, ucall_exit(0x4000), &ram, &NativeMmu) {
            ExitAction::Stop(Ok(d)) => assert_eq!((d.ops, d.tsc_start, d.tsc_end), (100, 5, 9)),
            other => panic!("{other:?}"),
        }
        put(
            &ram,
            0x4000,
            UcallCmd::Abort as u64,
            [12, 4, 0, 0, 0, 0],
            b"a.rsno",
            6,
        );
        assert_eq!(
            handle_exit(&mut st, ucall_exit(0x4000), &ram, &NativeMmu),
            ExitAction::Stop(Err(FailureKind::Assert {
                file: "a.rs".into(),
                line: 12,
                message: "no".into()
            }))
        );
    }

    #[test]
    fn done_with_a_report_block_is_read_and_a_bad_one_refused() {
        use shadowlab_abi::report_words::TOTAL;
        let ram = ram();
        let mut st = ExitState::new(0);
        // What the guest sends: a report encoded into a block.
        let mut sent = Report {
            ops: 77,
            ..Report::default()
        };
        sent.latency.record(300);
        let mut block = [0u64; TOTAL];
        sent.to_words(&mut block);
        for (i, w) in block.iter().enumerate() {
            ram.write_u64(0x8000 + 8 * i as u64, *w).unwrap();
        }
        let len = (TOTAL * 8) as u64;
        put(
            &ram,
            0x4000,
            UcallCmd::Done as u64,
            [77, 0, 0, 0, 0x8000, len],
            b"",
            0,
        );
        match handle_exit(&mut st, ucall_exit(0x4000), &ram, &NativeMmu) {
            ExitAction::Stop(Ok(d)) => assert_eq!(*d.report.unwrap(), sent),
            other => panic!("{other:?}"),
        }
        for (gpa, len) in [
            (0x8004, len),
            (0x8000, len - 8),
            ((1 << 20) - 16, len),
            (u64::MAX - 7, len),
        ] {
            assert_eq!(
                ucall(
                    &mut st,
                    &ram,
                    &NativeMmu,
                    UcallCmd::Done as u64,
                    [1, 0, 0, 0, gpa, len]
                ),
                ExitAction::Resume,
                "{gpa:#x}"
            );
            assert_eq!(ucall_status(&ram), status::BAD_ARGUMENT);
        }
    }

    #[test]
    fn a_refused_report_block_says_why() {
        use shadowlab_abi::report_words::{LAT_COUNT, TOTAL};
        let ram = ram();
        let len = (TOTAL * 8) as u64;
        assert_eq!(read_report(&ram, 0x8000, 0), Ok(None), "no block");
        for (gpa, len) in [(0x8004, len), (0x8000, len - 8), ((1 << 20) - 16, len)] {
            assert_eq!(
                read_report(&ram, gpa, len),
                Err(ReportBlockError::Misplaced { gpa, len }),
                "{gpa:#x}"
            );
        }
        assert_eq!(read_report(&ram, 0x8000, len).unwrap().unwrap().ops, 0);
        // In place, but a histogram whose buckets do not add up to its count.
        ram.write_u64(0x8000 + 8 * LAT_COUNT as u64, 5).unwrap();
        let e = read_report(&ram, 0x8000, len).unwrap_err();
        assert!(matches!(e, ReportBlockError::Malformed(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "report block: latency histogram buckets hold 0 samples but its count is 5"
        );
    }

    #[test]
    fn bad_ucalls_fail_the_call_and_resume() {
        let ram = ram();
        let mut st = ExitState::new(0);
        assert_eq!(
            handle_exit(&mut st, ucall_exit(0xfff0_0000), &ram, &NativeMmu),
            ExitAction::ResumeRejectAddress
        );
        assert_eq!(
            handle_exit(&mut st, ucall_exit(0x4010), &ram, &NativeMmu),
            ExitAction::ResumeRejectAddress
        );
        assert_eq!(
            ucall(&mut st, &ram, &NativeMmu, 77, [0; 6]),
            ExitAction::Resume
        );
        assert_eq!(ucall_status(&ram), status::BAD_COMMAND);
        assert_eq!(
            ucall(
                &mut st,
                &ram,
                &NativeMmu,
                UcallCmd::LoadCr3 as u64,
                [0x7777, 0, 0, 0, 0, 0]
            ),
            ExitAction::Resume
        );
        assert_eq!(ucall_status(&ram), status::BAD_ARGUMENT);
        assert_eq!(st.exits.ucall_rejected, 4);
        // A ucall port access of the wrong size is not a ucall.
        assert!(matches!(
            handle_exit(
                &mut st,
                DecodedExit::IoOut {
                    port: UCALL_PORT,
                    size: 1,
                    value: 0
                },
                &ram,
                &NativeMmu
            ),
            ExitAction::Stop(Err(FailureKind::UnexpectedExit(_)))
        ));
    }

    #[test]
    fn mmu_hypercalls_reach_the_hooks() {
        let ram = ram();
        let mmu = FakeMmu::default();
        let mut st = ExitState::new(2);
        assert_eq!(
            ucall(
                &mut st,
                &ram,
                &mmu,
                UcallCmd::LoadCr3 as u64,
                [0x5000, 0, 0, 0, 0, 0]
            ),
            ExitAction::ResumeSetCr3(0x2_0000_5000)
        );
        assert_eq!(
            ucall(
                &mut st,
                &ram,
                &mmu,
                UcallCmd::Invlpg as u64,
                [0x8000_1000, 0, 0, 0, 0, 0]
            ),
            ExitAction::Resume
        );
        assert_eq!(
            ucall(&mut st, &ram, &mmu, UcallCmd::FlushTlb as u64, [0; 6]),
            ExitAction::Stop(Err(FailureKind::Mmu(
                HookError::Mmu(MmuError::PoolExhausted { pool: 64, free: 0 }).into()
            )))
        );
        assert_eq!(
            *mmu.calls.lock().unwrap(),
            vec!["cr3 2 0x5000".to_string(), "invlpg 0x80001000".to_string()]
        );
        // Native mode: the same call is answered UNSUPPORTED, never acted on.
        assert_eq!(
            ucall(
                &mut st,
                &ram,
                &NativeMmu,
                UcallCmd::LoadCr3 as u64,
                [0x5000, 0, 0, 0, 0, 0]
            ),
            ExitAction::Resume
        );
        assert_eq!(ucall_status(&ram), status::UNSUPPORTED);
    }

    #[test]
    fn page_faults_go_to_the_mmu_and_unfixed_ones_stop() {
        let ram = ram();
        let mmu = FakeMmu::default();
        let mut st = ExitState::new(0);
        let frame = ExceptionFrame {
            vector: 14,
            error_code: 2,
            rip: 0x1234,
            ..Default::default()
        };
        assert_eq!(
            handle_exit(
                &mut st,
                DecodedExit::Exception { frame, cr2: 0x5000 },
                &ram,
                &mmu
            ),
            ExitAction::Resume
        );
        assert_eq!(st.exits.page_fault_fixed, 1);
        assert_eq!(
            handle_exit(
                &mut st,
                DecodedExit::Exception { frame, cr2: 0x5000 },
                &ram,
                &NativeMmu
            ),
            ExitAction::Stop(Err(FailureKind::Exception { frame, cr2: 0x5000 }))
        );
        let gp = ExceptionFrame {
            vector: 13,
            ..frame
        };
        assert!(matches!(
            handle_exit(
                &mut st,
                DecodedExit::Exception { frame: gp, cr2: 0 },
                &ram,
                &mmu
            ),
            ExitAction::Stop(Err(FailureKind::Exception { .. }))
        ));
        assert_eq!(
            mmu.calls.lock().unwrap().len(),
            1,
            "only #PF reaches the MMU"
        );
    }

    /// Asks for emulation of every write fault at or above 0x2000_0000 and records the writes.
    #[derive(Default)]
    struct EmulatingMmu {
        writes: Mutex<Vec<(u64, u64, u8)>>,
    }
    impl MmuHooks for EmulatingMmu {
        fn page_fault(&self, _: usize, gva: u64, _: u64) -> Result<PfAction, HookError> {
            Ok(PfAction::Emulate {
                gpa: gva - 0x2000_0000,
            })
        }
        fn load_cr3(&self, _: usize, _: u64) -> Result<Option<u64>, HookError> {
            Ok(None)
        }
        fn invlpg(&self, _: usize, _: u64) -> Result<bool, HookError> {
            Ok(true)
        }
        fn flush_tlb(&self, _: usize) -> Result<bool, HookError> {
            Ok(true)
        }
        fn emulated_write(&self, _: usize, gpa: u64, value: u64, len: u8) -> Result<(), HookError> {
            if gpa == 0xbad {
                return Err(HookError::NativeEmulatesNoWrites { gpa });
            }
            self.writes.lock().unwrap().push((gpa, value, len));
            Ok(())
        }
        fn flush_before_entry(&self, _: usize) -> Result<Option<u64>, HookError> {
            Ok(None)
        }
    }

    #[test]
    fn a_write_protected_store_is_decoded_and_emulated() {
        let ram = ram();
        let mmu = EmulatingMmu::default();
        let mut st = ExitState::new(0);
        let frame = ExceptionFrame {
            vector: 14,
            error_code: 3,
            rip: 0x40_1000,
            rax: 0x8000_0000_1234_5067,
            ..Default::default()
        };
        let action = handle_exit(
            &mut st,
            DecodedExit::Exception {
                frame,
                cr2: 0x2000_5008,
            },
            &ram,
            &mmu,
        );
        assert_eq!(action, ExitAction::EmulateStore { gpa: 0x5008, frame });
        // mov [rdi], rax
        let next = complete_emulation(
            &mut st,
            0x5008,
            &frame,
            &[0x48, 0x89, 0x07, 0x90],
            &Gprs::default(),
            &mmu,
        );
        // Gprs::default() has rax = 0: the frame's saved RAX is what Gprs::at_fault would supply.
        assert_eq!(next, Ok(0x40_1003));
        assert_eq!(*mmu.writes.lock().unwrap(), vec![(0x5008, 0, 8)]);
        assert_eq!(st.exits.emulated_write, 1);
        // Not a store: a clear failure naming the bytes; an MMU refusal: an MMU failure.
        match complete_emulation(
            &mut st,
            0x5008,
            &frame,
            &[0x48, 0x01, 0x07],
            &Gprs::default(),
            &mmu,
        ) {
            Err(FailureKind::Emulation(e)) => {
                assert_eq!(e.bytes, [0x48, 0x01, 0x07]);
                assert!(e.to_string().contains("[48, 01, 07]"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            complete_emulation(
                &mut st,
                0xbad,
                &frame,
                &[0x48, 0x89, 0x07],
                &Gprs::default(),
                &mmu
            ),
            Err(FailureKind::Mmu(
                HookError::NativeEmulatesNoWrites { gpa: 0xbad }.into()
            ))
        );
    }

    #[test]
    fn fatal_exits_stop_with_their_kind() {
        let ram = ram();
        let mut st = ExitState::new(0);
        assert_eq!(
            handle_exit(&mut st, DecodedExit::Shutdown, &ram, &NativeMmu),
            ExitAction::Stop(Err(FailureKind::TripleFault))
        );
        assert_eq!(
            handle_exit(
                &mut st,
                DecodedExit::InternalError { suberror: 1 },
                &ram,
                &NativeMmu
            ),
            ExitAction::Stop(Err(FailureKind::InternalError { suberror: 1 }))
        );
        assert!(matches!(
            handle_exit(&mut st, DecodedExit::Hlt, &ram, &NativeMmu),
            ExitAction::Stop(Err(FailureKind::UnexpectedExit(_)))
        ));
        assert!(matches!(
            handle_exit(
                &mut st,
                DecodedExit::IoOut {
                    port: EXCEPTION_PORT + 7,
                    size: 1,
                    value: 0
                },
                &ram,
                &NativeMmu
            ),
            ExitAction::Stop(Err(FailureKind::UnexpectedExit(_)))
        ));
    }
}
