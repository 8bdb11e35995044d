//! Decoding the guest store that hit a write-protected guest page table, so that the shadow MMU
//! can emulate it (KVM's `x86_emulate_instruction` → `emulator_write_emulated` →
//! `kvm_mmu_track_write`, reduced to what a paravirtual guest's page-table writes are).
//!
//! Only MOV-family stores are emulated: `mov m, r`, `mov m, imm` and `movnti m, r`, of 1, 2, 4
//! or 8 bytes. The MMU's fault handler already knows the faulting guest-physical address; this
//! module supplies the value and length, and the instruction length to skip. Anything else
//! (a load, an RMW such as `add`/`xchg`/`lock xadd`, a vector store, undecodable bytes) is a
//! [`DecodeError`] that names the instruction's bytes.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// The guest's general-purpose registers at the faulting instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gprs {
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15, in the encoding order.
    pub regs: [u64; 16],
}

impl Gprs {
    /// From KVM's registers, with RAX, RDX and RSP replaced by the values the monitor's stub
    /// saved / the CPU pushed (the stub clobbers RAX and RDX, and runs on the IST stack).
    pub fn at_fault(r: &kvm_bindings::kvm_regs, frame: &super::monitor::ExceptionFrame) -> Self {
        Self {
            regs: [
                frame.rax, r.rcx, frame.rdx, r.rbx, frame.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9,
                r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            ],
        }
    }

    /// The value of a general-purpose register of any width (AH..BH are bits 8..16).
    fn get(&self, reg: Register) -> Option<u64> {
        let full = reg.full_register();
        let index = match full {
            Register::RAX => 0,
            Register::RCX => 1,
            Register::RDX => 2,
            Register::RBX => 3,
            Register::RSP => 4,
            Register::RBP => 5,
            Register::RSI => 6,
            Register::RDI => 7,
            Register::R8 => 8,
            Register::R9 => 9,
            Register::R10 => 10,
            Register::R11 => 11,
            Register::R12 => 12,
            Register::R13 => 13,
            Register::R14 => 14,
            Register::R15 => 15,
            _ => return None,
        };
        let v = self.regs[index];
        Some(match reg {
            Register::AH | Register::CH | Register::DH | Register::BH => (v >> 8) & 0xff,
            _ => v,
        })
    }
}

/// A decoded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    /// Bytes stored (1, 2, 4 or 8).
    pub len: u8,
    /// The value stored (zero-extended to 64 bits).
    pub value: u64,
    /// Length of the instruction, to advance RIP past it.
    pub insn_len: usize,
}

impl Store {
    /// The stored bytes, little-endian.
    pub fn bytes(&self) -> Vec<u8> {
        self.value.to_le_bytes()[..self.len as usize].to_vec()
    }
}

/// Why a faulting instruction cannot be emulated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot emulate the instruction at rip {rip:#x} (bytes {bytes:02x?}): {why}")]
pub struct DecodeError {
    /// Where it is.
    pub rip: u64,
    /// Its bytes (as many as were fetched if it did not decode).
    pub bytes: Vec<u8>,
    /// What is wrong with it.
    pub why: String,
}

/// Decodes the instruction at `rip` from `bytes` (up to 15 fetched bytes) as a MOV-family store.
pub fn decode_store(rip: u64, bytes: &[u8], gprs: &Gprs) -> Result<Store, DecodeError> {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn: Instruction = d.decode();
    let err = |why: String| {
        let n = if insn.is_invalid() {
            bytes.len()
        } else {
            insn.len().min(bytes.len())
        };
        DecodeError {
            rip,
            bytes: bytes[..n].to_vec(),
            why,
        }
    };
    if insn.is_invalid() {
        return Err(err(format!("does not decode ({:?})", d.last_error())));
    }
    if !matches!(insn.mnemonic(), Mnemonic::Mov | Mnemonic::Movnti) || insn.has_lock_prefix() {
        return Err(err(format!(
            "{:?} is not a MOV-family store",
            insn.mnemonic()
        )));
    }
    if insn.op0_kind() != OpKind::Memory {
        return Err(err("not a store (the destination is not memory)".into()));
    }
    let len = insn.memory_size().size();
    if !matches!(len, 1 | 2 | 4 | 8) {
        return Err(err(format!("a {len}-byte store")));
    }
    let raw = match insn.op1_kind() {
        OpKind::Register => {
            let r = insn.op1_register();
            if !r.is_gpr() {
                return Err(err(format!(
                    "the source {r:?} is not a general-purpose register"
                )));
            }
            gprs.get(r)
                .ok_or_else(|| err(format!("unknown source register {r:?}")))?
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate32to64
        | OpKind::Immediate8to64 => insn.immediate(1),
        k => return Err(err(format!("source operand kind {k:?}"))),
    };
    // Segment-relative stores through FS/GS would need their bases; the guest uses none.
    if matches!(insn.memory_segment(), Register::FS | Register::GS) {
        return Err(err("an FS/GS-relative store".into()));
    }
    debug_assert!(insn.code() != Code::INVALID);
    let value = if len == 8 {
        raw
    } else {
        raw & ((1u64 << (8 * len)) - 1)
    };
    Ok(Store {
        len: len as u8,
        value,
        insn_len: insn.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gprs() -> Gprs {
        let mut g = Gprs::default();
        for (i, r) in g.regs.iter_mut().enumerate() {
            *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1) ^ 0xa5a5_0000;
        }
        g.regs[0] = 0x8877_6655_4433_2211; // rax
        g
    }

    fn ok(bytes: &[u8]) -> Store {
        decode_store(0x1000, bytes, &gprs()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn register_stores_of_every_width() {
        let g = gprs();
        assert_eq!(
            ok(&[0x48, 0x89, 0x07]),
            Store {
                len: 8,
                value: g.regs[0],
                insn_len: 3
            }
        ); // mov [rdi], rax
        assert_eq!(
            ok(&[0x89, 0x4f, 0x08]),
            Store {
                len: 4,
                value: g.regs[1] & 0xffff_ffff,
                insn_len: 3
            }
        ); // mov [rdi+8], ecx
        assert_eq!(
            ok(&[0x66, 0x89, 0x17]),
            Store {
                len: 2,
                value: g.regs[2] & 0xffff,
                insn_len: 3
            }
        ); // mov [rdi], dx
        assert_eq!(
            ok(&[0x88, 0x27]),
            Store {
                len: 1,
                value: 0x22,
                insn_len: 2
            }
        ); // mov [rdi], ah
        assert_eq!(ok(&[0x40, 0x88, 0x37]).value, g.regs[6] & 0xff); // mov [rdi], sil
        assert_eq!(ok(&[0x4c, 0x89, 0x07]).value, g.regs[8]); // mov [rdi], r8
        assert_eq!(
            ok(&[0x48, 0x0f, 0xc3, 0x07]),
            Store {
                len: 8,
                value: g.regs[0],
                insn_len: 4
            }
        ); // movnti
    }

    #[test]
    fn immediate_stores_are_sign_extended_then_truncated() {
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0x78, 0x56, 0x34, 0x12]).value,
            0x1234_5678
        );
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]).value,
            u64::MAX
        );
        assert_eq!(
            ok(&[0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]),
            Store {
                len: 4,
                value: 0xffff_ffff,
                insn_len: 6
            }
        );
        assert_eq!(
            ok(&[0xc6, 0x07, 0x05]),
            Store {
                len: 1,
                value: 5,
                insn_len: 3
            }
        );
        assert_eq!(
            ok(&[0x66, 0xc7, 0x07, 0x34, 0x12]),
            Store {
                len: 2,
                value: 0x1234,
                insn_len: 5
            }
        );
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0x01, 0, 0, 0]).bytes(),
            vec![1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn everything_else_is_a_clear_error_naming_the_bytes() {
        for (bytes, what) in [
            (&[0x48, 0x01, 0x07][..], "Add"),              // add [rdi], rax
            (&[0xf0, 0x48, 0x0f, 0xc1, 0x07][..], "Xadd"), // lock xadd [rdi], rax
            (&[0x48, 0x87, 0x07][..], "Xchg"),             // xchg [rdi], rax
            (&[0x48, 0x8b, 0x07][..], "not a store"),      // mov rax, [rdi]
            (&[0x0f, 0x29, 0x07][..], "Movaps"),           // movaps [rdi], xmm0
            (&[0x48][..], "does not decode"),              // truncated
            (&[0x64, 0x48, 0x89, 0x07][..], "FS/GS"),      // mov fs:[rdi], rax
        ] {
            let e = decode_store(0x2000, bytes, &gprs()).unwrap_err();
            assert!(e.why.contains(what), "{bytes:02x?}: {e}");
            assert_eq!(e.rip, 0x2000);
            assert!(!e.bytes.is_empty());
            assert!(e.to_string().contains(&format!("{:02x?}", e.bytes)), "{e}");
        }
    }
}
