//! The VMM side of the ucall ABI: reads and validates a message from guest memory.
//!
//! Nothing here trusts the guest: the message address, the command, every length and every
//! MMU argument is checked before use, and guest memory is read through bounds-checked copies.

use shadowlab_abi::layout::{is_canonical, PAGE_SIZE};
use shadowlab_abi::{
    UcallCmd, UCALL_MSG_SIZE, UCALL_OFF_ARGS, UCALL_OFF_CMD, UCALL_OFF_LEN, UCALL_OFF_TEXT,
    UCALL_TEXT_LEN,
};

use crate::mem::{GuestPhys, MemError};

/// A decoded, validated ucall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ucall {
    /// Command 0: nothing.
    None,
    /// `GUEST_SYNC(stage, value)`.
    Sync {
        /// Stage.
        stage: u64,
        /// Value.
        value: u64,
    },
    /// `GUEST_ASSERT` failed.
    Abort {
        /// Source file.
        file: String,
        /// Line.
        line: u64,
        /// Message.
        message: String,
    },
    /// `GUEST_PRINTF`.
    Printf(String),
    /// `GUEST_DONE` with results.
    Done([u64; 6]),
    /// Load CR3 with a guest-physical root.
    LoadCr3(u64),
    /// INVLPG of a gva.
    Invlpg(u64),
    /// Flush the TLB.
    FlushTlb,
}

/// Why a ucall was refused. [`UcallError::status`] is what the guest sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UcallError {
    /// The message address itself is bad: the guest gets RAX = u32::MAX.
    #[error("message address {0:#x} is misaligned or outside guest RAM")]
    BadAddress(u64),
    /// Unknown command number.
    #[error("unknown ucall command {0:#x}")]
    BadCommand(u64),
    /// An argument is out of range.
    #[error("bad argument: {0}")]
    BadArgument(String),
}

impl UcallError {
    /// The status written into the message (none for a bad address).
    pub fn status(&self) -> Option<u64> {
        use shadowlab_abi::status;
        match self {
            Self::BadAddress(_) => None,
            Self::BadCommand(_) => Some(status::BAD_COMMAND),
            Self::BadArgument(_) => Some(status::BAD_ARGUMENT),
        }
    }
}

/// Checks a message address: aligned to the message size (so it never crosses a page) and
/// inside guest RAM, not in the null page.
pub fn check_address<M: GuestPhys + ?Sized>(mem: &M, gpa: u64) -> Result<(), UcallError> {
    let size = UCALL_MSG_SIZE as u64;
    if gpa < PAGE_SIZE
        || gpa % size != 0
        || gpa.checked_add(size).is_none_or(|e| e > mem.ram_size())
    {
        return Err(UcallError::BadAddress(gpa));
    }
    Ok(())
}

/// Reads and validates the message at `gpa`.
pub fn read<M: GuestPhys + ?Sized>(mem: &M, gpa: u64) -> Result<Ucall, UcallError> {
    check_address(mem, gpa)?;
    let mut head = [0u8; UCALL_OFF_TEXT as usize];
    mem.read(gpa, &mut head)
        .map_err(|_| UcallError::BadAddress(gpa))?;
    let word = |off: u64| {
        u64::from_le_bytes(
            head[off as usize..off as usize + 8]
                .try_into()
                .expect("8 bytes"),
        )
    };
    let cmd_raw = word(UCALL_OFF_CMD);
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = word(UCALL_OFF_ARGS + 8 * i as u64);
    }
    let len = word(UCALL_OFF_LEN);
    let cmd = UcallCmd::from_u64(cmd_raw).ok_or(UcallError::BadCommand(cmd_raw))?;
    let text = |len: u64| -> Result<Vec<u8>, UcallError> {
        if len > UCALL_TEXT_LEN as u64 {
            return Err(UcallError::BadArgument(format!(
                "text length {len} > {UCALL_TEXT_LEN}"
            )));
        }
        let mut t = vec![0u8; len as usize];
        mem.read(gpa + UCALL_OFF_TEXT, &mut t)
            .map_err(|_| UcallError::BadAddress(gpa))?;
        Ok(t)
    };
    Ok(match cmd {
        UcallCmd::None => Ucall::None,
        UcallCmd::Sync => Ucall::Sync {
            stage: args[0],
            value: args[1],
        },
        UcallCmd::Printf => Ucall::Printf(String::from_utf8_lossy(&text(len)?).into_owned()),
        UcallCmd::Abort => {
            let t = text(len)?;
            let file_len = args[1];
            if file_len > len {
                return Err(UcallError::BadArgument(format!(
                    "file name length {file_len} > text length {len}"
                )));
            }
            let (file, message) = t.split_at(file_len as usize);
            Ucall::Abort {
                file: String::from_utf8_lossy(file).into_owned(),
                line: args[0],
                message: String::from_utf8_lossy(message).into_owned(),
            }
        }
        UcallCmd::Done => Ucall::Done(args),
        UcallCmd::LoadCr3 => {
            let root = args[0];
            // CR3's PCD/PWT bits are not used by the guest; the root must be a page of RAM.
            if root % PAGE_SIZE != 0
                || root
                    .checked_add(PAGE_SIZE)
                    .is_none_or(|e| e > mem.ram_size())
            {
                return Err(UcallError::BadArgument(format!(
                    "CR3 root {root:#x} is not a page of guest RAM"
                )));
            }
            Ucall::LoadCr3(root)
        }
        UcallCmd::Invlpg => {
            if !is_canonical(args[0]) {
                return Err(UcallError::BadArgument(format!(
                    "INVLPG address {:#x} is not canonical",
                    args[0]
                )));
            }
            Ucall::Invlpg(args[0])
        }
        UcallCmd::FlushTlb => Ucall::FlushTlb,
    })
}

/// Writes the status of the message at `gpa` (already validated by [`read`] or
/// [`check_address`]).
pub fn write_status<M: GuestPhys + ?Sized>(mem: &M, gpa: u64, status: u64) -> Result<(), MemError> {
    mem.write_u64(gpa + shadowlab_abi::UCALL_OFF_RET, status)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kvm::hostmem::new_region;
    use crate::mem::MemRegion;
    use shadowlab_abi::{status, UCALL_OFF_RET};

    pub(crate) fn put(ram: &MemRegion, gpa: u64, cmd: u64, args: [u64; 6], text: &[u8], len: u64) {
        ram.write_u64(gpa, cmd).unwrap();
        for (i, a) in args.iter().enumerate() {
            ram.write_u64(gpa + 8 + 8 * i as u64, *a).unwrap();
        }
        ram.write_u64(gpa + UCALL_OFF_RET, status::PENDING).unwrap();
        ram.write_u64(gpa + UCALL_OFF_LEN, len).unwrap();
        ram.write_bytes(gpa + UCALL_OFF_TEXT, text).unwrap();
    }

    #[test]
    fn decodes_assert_with_file_line_message() {
        let ram = new_region(1 << 20).unwrap();
        put(
            &ram,
            0x4000,
            UcallCmd::Abort as u64,
            [42, 7, 0, 0, 0, 0],
            b"main.rsboom!",
            12,
        );
        assert_eq!(
            read(&ram, 0x4000).unwrap(),
            Ucall::Abort {
                file: "main.rs".into(),
                line: 42,
                message: "boom!".into()
            }
        );
    }

    #[test]
    fn refuses_bad_addresses_lengths_and_arguments() {
        let ram = new_region(1 << 20).unwrap();
        assert_eq!(read(&ram, 0x4008), Err(UcallError::BadAddress(0x4008)));
        assert_eq!(read(&ram, 1 << 20), Err(UcallError::BadAddress(1 << 20)));
        assert_eq!(read(&ram, 0), Err(UcallError::BadAddress(0)));
        assert_eq!(
            read(&ram, u64::MAX - 511),
            Err(UcallError::BadAddress(u64::MAX - 511))
        );
        put(&ram, 0x4000, 0x999, [0; 6], b"", 0);
        assert_eq!(read(&ram, 0x4000), Err(UcallError::BadCommand(0x999)));
        put(&ram, 0x4000, UcallCmd::Printf as u64, [0; 6], b"", 1 << 40);
        assert!(matches!(
            read(&ram, 0x4000),
            Err(UcallError::BadArgument(_))
        ));
        put(
            &ram,
            0x4000,
            UcallCmd::Abort as u64,
            [1, 100, 0, 0, 0, 0],
            b"x",
            1,
        );
        assert!(matches!(
            read(&ram, 0x4000),
            Err(UcallError::BadArgument(_))
        ));
        for root in [1u64 << 20, 0x1234, !0xfffu64] {
            put(
                &ram,
                0x4000,
                UcallCmd::LoadCr3 as u64,
                [root, 0, 0, 0, 0, 0],
                b"",
                0,
            );
            assert!(
                matches!(read(&ram, 0x4000), Err(UcallError::BadArgument(_))),
                "root {root:#x}"
            );
        }
        put(
            &ram,
            0x4000,
            UcallCmd::Invlpg as u64,
            [0x0000_8000_0000_0000, 0, 0, 0, 0, 0],
            b"",
            0,
        );
        assert!(matches!(
            read(&ram, 0x4000),
            Err(UcallError::BadArgument(_))
        ));
        put(
            &ram,
            0x4000,
            UcallCmd::Invlpg as u64,
            [0xffff_8000_0000_1000, 0, 0, 0, 0, 0],
            b"",
            0,
        );
        assert_eq!(read(&ram, 0x4000), Ok(Ucall::Invlpg(0xffff_8000_0000_1000)));
    }
}
