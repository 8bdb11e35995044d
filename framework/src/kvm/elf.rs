//! A minimal ELF64 loader for the guest image: validates the header, walks the PT_LOAD program
//! headers, and hands back the segments (file bytes + zero-filled tail) to copy into guest RAM.
//! Every offset is bounds-checked against the file; a malformed image is an [`ElfError`].

use thiserror::Error;

/// Why an image was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its headers claim.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// Not a little-endian x86-64 ELF64 executable.
    #[error("not an x86-64 ELF64 executable: {0}")]
    NotX86_64Exec(&'static str),
    /// A segment's size or addresses are inconsistent.
    #[error("segment {index}: {what}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// What is wrong.
        what: String,
    },
    /// No PT_LOAD segment.
    #[error("no loadable segment")]
    NoSegments,
}

/// One PT_LOAD segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address it is linked at.
    pub vaddr: u64,
    /// Physical (load) address.
    pub paddr: u64,
    /// Offset of its bytes in the file.
    pub file_offset: usize,
    /// Bytes taken from the file.
    pub file_size: usize,
    /// Bytes in memory (>= file_size; the rest is zero).
    pub mem_size: u64,
    /// p_flags (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// A parsed image.
#[derive(Debug, Clone)]
pub struct ElfImage<'a> {
    /// The file.
    pub bytes: &'a [u8],
    /// Entry point (virtual).
    pub entry: u64,
    /// Loadable segments in file order.
    pub segments: Vec<Segment>,
}

const PT_LOAD: u32 = 1;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Truncated("header field"))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(ElfError::Truncated("header field"))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(ElfError::Truncated("header field"))
}

impl<'a> ElfImage<'a> {
    /// Parses `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < 64 {
            return Err(ElfError::Truncated("ELF header"));
        }
        if &bytes[0..4] != b"\x7fELF" {
            return Err(ElfError::NotX86_64Exec("bad magic"));
        }
        if bytes[4] != 2 || bytes[5] != 1 {
            return Err(ElfError::NotX86_64Exec("not ELF64 little-endian"));
        }
        if u16_at(bytes, 16)? != 2 {
            return Err(ElfError::NotX86_64Exec("not ET_EXEC"));
        }
        if u16_at(bytes, 18)? != 62 {
            return Err(ElfError::NotX86_64Exec("machine is not x86-64"));
        }
        let entry = u64_at(bytes, 24)?;
        let phoff =
            usize::try_from(u64_at(bytes, 32)?).map_err(|_| ElfError::Truncated("e_phoff"))?;
        let phentsize = usize::from(u16_at(bytes, 54)?);
        let phnum = usize::from(u16_at(bytes, 56)?);
        if phentsize < 56 {
            return Err(ElfError::NotX86_64Exec("e_phentsize too small"));
        }
        let mut segments = Vec::new();
        for index in 0..phnum {
            let ph = phoff
                .checked_add(
                    index
                        .checked_mul(phentsize)
                        .ok_or(ElfError::Truncated("phdr"))?,
                )
                .ok_or(ElfError::Truncated("phdr"))?;
            if ph.checked_add(56).is_none_or(|end| end > bytes.len()) {
                return Err(ElfError::Truncated("program header table"));
            }
            if u32_at(bytes, ph)? != PT_LOAD {
                continue;
            }
            let flags = u32_at(bytes, ph + 4)?;
            let offset = u64_at(bytes, ph + 8)?;
            let vaddr = u64_at(bytes, ph + 16)?;
            let paddr = u64_at(bytes, ph + 24)?;
            let filesz = u64_at(bytes, ph + 32)?;
            let memsz = u64_at(bytes, ph + 40)?;
            let bad = |what: String| ElfError::BadSegment { index, what };
            if filesz > memsz {
                return Err(bad(format!("p_filesz {filesz:#x} > p_memsz {memsz:#x}")));
            }
            let end = offset
                .checked_add(filesz)
                .ok_or_else(|| bad("file range overflows".into()))?;
            if end > bytes.len() as u64 {
                return Err(bad(format!(
                    "file range {offset:#x}..{end:#x} beyond the file"
                )));
            }
            if vaddr.checked_add(memsz).is_none() || paddr.checked_add(memsz).is_none() {
                return Err(bad("address range overflows".into()));
            }
            segments.push(Segment {
                vaddr,
                paddr,
                file_offset: offset as usize,
                file_size: filesz as usize,
                mem_size: memsz,
                flags,
            });
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        Ok(Self {
            bytes,
            entry,
            segments,
        })
    }

    /// The file bytes of a segment.
    pub fn data(&self, seg: &Segment) -> &'a [u8] {
        &self.bytes[seg.file_offset..seg.file_offset + seg.file_size]
    }

    /// End (exclusive) of the highest physical address any segment occupies.
    pub fn phys_end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr + s.mem_size)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_elf() -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 + 16];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        b[ph + 16..ph + 24].copy_from_slice(&0x1000u64.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&32u64.to_le_bytes());
        b
    }

    #[test]
    fn parses_a_minimal_image() {
        let b = tiny_elf();
        let img = ElfImage::parse(&b).unwrap();
        assert_eq!(img.entry, 0x1000);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].mem_size, 32);
        assert_eq!(img.phys_end(), 0x1020);
    }

    #[test]
    fn rejects_malformed_images() {
        assert_eq!(
            ElfImage::parse(&[0; 10]).unwrap_err(),
            ElfError::Truncated("ELF header")
        );
        let mut b = tiny_elf();
        b[18] = 3;
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::NotX86_64Exec(_))
        ));
        let mut b = tiny_elf();
        b[64 + 32..64 + 40].copy_from_slice(&1000u64.to_le_bytes()); // filesz > memsz
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
        let mut b = tiny_elf();
        b[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // offset overflows
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
        let mut b = tiny_elf();
        b[56..58].copy_from_slice(&100u16.to_le_bytes()); // phnum beyond file
        assert!(matches!(ElfImage::parse(&b), Err(ElfError::Truncated(_))));
    }

    #[test]
    fn the_built_guest_parses() {
        let img = ElfImage::parse(super::super::guest_image::GUEST_ELF).unwrap();
        assert!(img.entry >= shadowlab_abi::layout::DIRECT_MAP_BASE);
        for s in &img.segments {
            assert_eq!(s.vaddr - s.paddr, shadowlab_abi::layout::DIRECT_MAP_BASE);
        }
    }
}
