//! KVM's binary statistics (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst "KVM_GET_STATS_FD").
//!
//! The fd holds a header, an id string, a descriptor block (one `kvm_stats_desc` plus its name
//! per statistic) and a data block; the descriptors are read once, the data on every snapshot
//! with `pread`. Cumulative counters are reported as deltas over a run; instant and peak values
//! as their final value.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use super::error::KvmError;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;

const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;

/// One statistic's descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDesc {
    /// Name, e.g. `mmu_unsync`.
    pub name: String,
    /// `KVM_STATS_TYPE_*` (0 cumulative, 1 instant, 2 peak, 3/4 histograms).
    pub kind: u32,
    /// Offset of its values in the data block.
    pub offset: u32,
    /// Number of u64 values.
    pub size: u16,
}

/// An open stats fd with its descriptors.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    data_offset: u64,
    descs: Vec<StatDesc>,
}

/// A snapshot: name -> value (histograms summed over their buckets).
pub type Snapshot = BTreeMap<String, u64>;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl StatsFd {
    /// KVM_GET_STATS_FD on a VM or vCPU fd.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, KvmError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if rc < 0 {
            return Err(KvmError::GetStatsFd(std::io::Error::last_os_error()));
        }
        // SAFETY: rc is a fresh fd we own.
        let file = unsafe { File::from_raw_fd(rc) };
        Self::parse(file)
    }

    fn parse(file: File) -> Result<Self, KvmError> {
        let bad = |what: &'static str| KvmError::MalformedStats { what };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0)
            .map_err(KvmError::ReadStatsHeader)?;
        let name_size = u32_at(&header, 4).ok_or_else(|| bad("header"))? as usize;
        let num_desc = u32_at(&header, 8).ok_or_else(|| bad("header"))? as usize;
        let desc_offset = u64::from(u32_at(&header, 16).ok_or_else(|| bad("header"))?);
        let data_offset = u64::from(u32_at(&header, 20).ok_or_else(|| bad("header"))?);
        if name_size > 4096 || num_desc > 100_000 {
            return Err(bad("implausible header"));
        }
        let desc_size = 16 + name_size;
        let mut block = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut block, desc_offset)
            .map_err(KvmError::ReadStatsDescriptors)?;
        let mut descs = Vec::with_capacity(num_desc);
        for d in block.chunks_exact(desc_size) {
            let flags = u32_at(d, 0).ok_or_else(|| bad("descriptor"))?;
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u32_at(d, 8).ok_or_else(|| bad("descriptor"))?;
            let name_bytes = &d[16..];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            descs.push(StatDesc {
                name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                kind: flags & TYPE_MASK,
                offset,
                size,
            });
        }
        Ok(Self {
            file,
            data_offset,
            descs,
        })
    }

    /// The descriptors.
    pub fn descs(&self) -> &[StatDesc] {
        &self.descs
    }

    /// Reads every statistic now.
    pub fn snapshot(&self) -> Result<Snapshot, KvmError> {
        let end = self
            .descs
            .iter()
            .map(|d| d.offset as usize + 8 * d.size as usize)
            .max()
            .unwrap_or(0);
        let mut data = vec![0u8; end];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(KvmError::ReadStatsData)?;
        let mut out = Snapshot::new();
        for d in &self.descs {
            let mut sum = 0u64;
            for i in 0..d.size as usize {
                let at = d.offset as usize + 8 * i;
                sum = sum.wrapping_add(u64::from_le_bytes(
                    data[at..at + 8].try_into().expect("8 bytes"),
                ));
            }
            out.insert(d.name.clone(), sum);
        }
        Ok(out)
    }

    /// Whether statistic `name` is cumulative (reported as a delta).
    pub fn is_cumulative(&self, name: &str) -> bool {
        self.descs
            .iter()
            .any(|d| d.name == name && d.kind == TYPE_CUMULATIVE)
    }

    /// `after - before` for cumulative statistics, `after` for the others.
    pub fn delta(&self, before: &Snapshot, after: &Snapshot) -> Snapshot {
        after
            .iter()
            .map(|(k, &v)| {
                let d = if self.is_cumulative(k) {
                    v.wrapping_sub(before.get(k).copied().unwrap_or(0))
                } else {
                    v
                };
                (k.clone(), d)
            })
            .collect()
    }
}

/// Adds `add` into `into`, key by key.
pub fn accumulate(into: &mut Snapshot, add: &Snapshot) {
    for (k, v) in add {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// The VM statistics the framework reports first (KVM's shadow-MMU counters).
pub const MMU_STATS: [&str; 8] = [
    "mmu_unsync",
    "mmu_pte_write",
    "mmu_shadow_zapped",
    "mmu_flooded",
    "mmu_recycled",
    "mmu_cache_miss",
    "mmu_pde_zapped",
    "remote_tlb_flush",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stats file in KVM's format with two counters.
    fn fake_file() -> File {
        let name_size = 48usize;
        let descs = 2usize;
        let desc_offset = 24 + 16; // header + id
        let data_offset = desc_offset + descs * (16 + name_size);
        let mut b = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            descs as u32,
            24,
            desc_offset as u32,
            data_offset as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[b'k'; 16]);
        for (i, (name, flags)) in [("mmu_unsync", 0u32), ("pages_4k", 1u32)]
            .iter()
            .enumerate()
        {
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&(8 * i as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size, 0);
            b.extend_from_slice(&n);
        }
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&9u64.to_le_bytes());
        let path = std::env::temp_dir().join(format!("shadowlab-stats-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&b).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn parses_descriptors_and_computes_deltas() {
        let s = StatsFd::parse(fake_file()).unwrap();
        assert_eq!(s.descs().len(), 2);
        assert_eq!(s.descs()[0].name, "mmu_unsync");
        let snap = s.snapshot().unwrap();
        assert_eq!(snap["mmu_unsync"], 5);
        assert_eq!(snap["pages_4k"], 9);
        let before: Snapshot =
            [("mmu_unsync".to_string(), 2), ("pages_4k".to_string(), 100)].into();
        let d = s.delta(&before, &snap);
        assert_eq!(d["mmu_unsync"], 3, "cumulative: delta");
        assert_eq!(d["pages_4k"], 9, "instant: final value");
    }
}
