//! Host detection for `shadowlab info`: what this machine's `/dev/kvm` is and can do.
//!
//! Everything is detected, nothing assumed: `/dev/kvm` is opened, the CPU is read with
//! `raw-cpuid`, KVM modules and their parameters are read (read-only) from `/sys/module`, KVM
//! capabilities are queried, and hardware performance counters are tried with
//! `perf_event_open`. [`HostInfo`] serialises to JSON for result manifests and prints a human
//! summary with `Display`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod caps;
mod cpu;
mod perf;

pub use caps::{CapInfo, CAPS};
pub use cpu::CpuDesc;
pub use perf::PerfInfo;

/// What kind of virtualisation `/dev/kvm` sits on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flavour {
    /// KVM on bare metal with Intel VMX.
    BareMetalVmx,
    /// KVM on bare metal with AMD SVM.
    BareMetalSvm,
    /// KVM inside a VM that exposes VMX/SVM to it (nested virtualisation).
    Nested {
        /// `vmx` or `svm`.
        extension: String,
        /// The outer hypervisor, from CPUID 0x40000000.
        outer: String,
    },
    /// KVM without hardware virtualisation extensions: a software or paravirtual
    /// implementation (e.g. `kvm_pvm`), typically itself inside a VM.
    Software {
        /// The KVM vendor module.
        module: String,
        /// The outer hypervisor, if any.
        outer: Option<String>,
    },
    /// No usable `/dev/kvm`.
    None,
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flavour::BareMetalVmx => write!(f, "bare-metal VMX"),
            Flavour::BareMetalSvm => write!(f, "bare-metal SVM"),
            Flavour::Nested { extension, outer } => {
                write!(f, "nested ({extension} exposed by {outer})")
            }
            Flavour::Software { module, outer } => match outer {
                Some(o) => write!(f, "software/paravirtual ({module}, inside {o})"),
                None => write!(f, "software/paravirtual ({module})"),
            },
            Flavour::None => write!(f, "none (no usable /dev/kvm)"),
        }
    }
}

/// The state of `/dev/kvm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmDevice {
    /// The node exists.
    pub present: bool,
    /// It could be opened (error otherwise).
    pub open_error: Option<String>,
    /// KVM_GET_API_VERSION.
    pub api_version: Option<i32>,
}

/// Everything `shadowlab info` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostInfo {
    /// The CPU.
    pub cpu: CpuDesc,
    /// Host CPUs online.
    pub host_cpus: usize,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// `/dev/kvm`.
    pub kvm: KvmDevice,
    /// The flavour, and why.
    pub flavour: Flavour,
    /// KVM-related modules loaded (`/sys/module/kvm*`).
    pub kvm_modules: Vec<String>,
    /// `/sys/module/kvm/parameters/tdp_mmu` (`None`: not readable).
    pub tdp_mmu: Option<bool>,
    /// Two-dimensional paging in the vendor module (`ept`/`npt`), if it has the parameter.
    pub tdp: Option<bool>,
    /// The vendor module's parameters (read-only).
    pub vendor_params: BTreeMap<String, String>,
    /// KVM capabilities the framework relies on or reports.
    pub caps: Vec<CapInfo>,
    /// Performance counters.
    pub perf: PerfInfo,
    /// What is missing for the backends or measurements, one line each.
    pub missing: Vec<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_bool_param(path: &Path) -> Option<bool> {
    match read_trimmed(path)?.as_str() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// The KVM modules under `sys_module` (`/sys/module`), sorted.
fn kvm_modules(sys_module: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys_module)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n == "kvm" || n.starts_with("kvm_"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The vendor module among `modules` (`kvm_intel`, `kvm_amd`, `kvm_pvm`, ...).
fn vendor_module(modules: &[String]) -> Option<&str> {
    ["kvm_intel", "kvm_amd"]
        .iter()
        .find(|m| modules.iter().any(|x| x == *m))
        .copied()
        .or_else(|| modules.iter().map(String::as_str).find(|m| *m != "kvm"))
}

/// Decides the flavour from what was seen. Pure, so it is tested on made-up hosts.
pub fn classify(kvm_usable: bool, cpu: &CpuDesc, modules: &[String]) -> Flavour {
    if !kvm_usable {
        return Flavour::None;
    }
    let ext = if cpu.has_vmx {
        Some("vmx")
    } else if cpu.has_svm {
        Some("svm")
    } else {
        None
    };
    let vendor = vendor_module(modules);
    let hw_vendor = matches!(vendor, Some("kvm_intel" | "kvm_amd"));
    match (ext, hw_vendor, cpu.hypervisor.as_ref()) {
        (Some(_), true, None) if cpu.has_vmx => Flavour::BareMetalVmx,
        (Some(_), true, None) => Flavour::BareMetalSvm,
        (Some(e), true, Some(outer)) => Flavour::Nested {
            extension: e.to_string(),
            outer: outer.clone(),
        },
        _ => Flavour::Software {
            module: vendor.unwrap_or("unknown").to_string(),
            outer: cpu.hypervisor.clone(),
        },
    }
}

fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed utsname it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates the field within its array.
    let c = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    c.to_string_lossy().into_owned()
}

/// Detects the host.
pub fn detect() -> HostInfo {
    let sys_module = Path::new("/sys/module");
    let cpu = CpuDesc::detect();
    let present = Path::new("/dev/kvm").exists();
    let (kvm_handle, open_error) = match kvm_ioctls::Kvm::new() {
        Ok(k) => (Some(k), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let api_version = kvm_handle.as_ref().map(|k| k.get_api_version());
    let kvm = KvmDevice {
        present,
        open_error,
        api_version,
    };
    let usable = api_version == Some(12);
    let modules = kvm_modules(sys_module);
    let flavour = classify(usable, &cpu, &modules);
    let vendor = vendor_module(&modules).map(str::to_string);
    let mut vendor_params = BTreeMap::new();
    if let Some(v) = &vendor {
        if let Ok(d) = std::fs::read_dir(sys_module.join(v).join("parameters")) {
            for e in d.filter_map(|e| e.ok()) {
                if let (Ok(name), Some(val)) =
                    (e.file_name().into_string(), read_trimmed(&e.path()))
                {
                    vendor_params.insert(name, val);
                }
            }
        }
    }
    let tdp_mmu = read_bool_param(&sys_module.join("kvm/parameters/tdp_mmu"));
    let tdp = ["kvm_intel/parameters/ept", "kvm_amd/parameters/npt"]
        .iter()
        .find_map(|p| read_bool_param(&sys_module.join(p)));
    let caps = kvm_handle.as_ref().map(caps::query).unwrap_or_default();
    let perf = PerfInfo::detect();

    let mut missing = Vec::new();
    if !usable {
        missing.push(format!(
            "/dev/kvm not usable ({}): the kvm and native backends cannot run",
            kvm.open_error
                .clone()
                .unwrap_or_else(|| format!("API version {api_version:?}"))
        ));
    }
    for c in caps.iter().filter(|c| c.required && c.value <= 0) {
        missing.push(format!("KVM capability {} (required)", c.name));
    }
    for c in caps.iter().filter(|c| !c.required && c.value <= 0) {
        missing.push(format!("KVM capability {} (optional: {})", c.name, c.why));
    }
    if tdp != Some(true) {
        missing.push(
            "two-dimensional paging (EPT/NPT): the host shadows guest page tables itself".into(),
        );
    }
    if !perf.hw_instructions {
        missing.push(format!(
            "hardware performance counters ({}): only software counters and the TSC",
            perf.hw_error.clone().unwrap_or_default()
        ));
    }
    if !cpu.invariant_tsc {
        missing.push("invariant TSC: TSC-based timings may drift".into());
    }
    HostInfo {
        cpu,
        host_cpus: std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1),
        kernel: kernel_release(),
        kvm,
        flavour,
        kvm_modules: modules,
        tdp_mmu,
        tdp,
        vendor_params,
        caps,
        perf,
        missing,
    }
}

impl fmt::Display for HostInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        writeln!(f, "cpu:          {}", self.cpu)?;
        writeln!(f, "host cpus:    {}", self.host_cpus)?;
        writeln!(f, "kernel:       {}", self.kernel)?;
        match (&self.kvm.open_error, self.kvm.api_version) {
            (None, Some(v)) => writeln!(f, "/dev/kvm:     usable, API version {v}")?,
            (Some(e), _) => writeln!(
                f,
                "/dev/kvm:     {}: {e}",
                if self.kvm.present {
                    "present, not openable"
                } else {
                    "absent"
                }
            )?,
            (None, None) => writeln!(f, "/dev/kvm:     unknown")?,
        }
        writeln!(f, "flavour:      {}", self.flavour)?;
        writeln!(f, "kvm modules:  {}", self.kvm_modules.join(", "))?;
        writeln!(f, "tdp_mmu:      {}", yn(self.tdp_mmu))?;
        writeln!(f, "EPT/NPT:      {}", yn(self.tdp))?;
        if !self.vendor_params.is_empty() {
            let p: Vec<String> = self
                .vendor_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "vendor params: {}", p.join(" "))?;
        }
        writeln!(f, "capabilities:")?;
        for c in &self.caps {
            writeln!(
                f,
                "  {:<24} {:>6}{}",
                c.name,
                c.value,
                if c.required { "  (required)" } else { "" }
            )?;
        }
        writeln!(f, "perf:         {}", self.perf)?;
        if self.missing.is_empty() {
            writeln!(f, "missing:      nothing")?;
        } else {
            writeln!(f, "missing:")?;
            for m in &self.missing {
                writeln!(f, "  - {m}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(vmx: bool, svm: bool, hv: Option<&str>) -> CpuDesc {
        CpuDesc {
            has_vmx: vmx,
            has_svm: svm,
            hypervisor: hv.map(str::to_string),
            ..CpuDesc::default()
        }
    }

    fn mods(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_the_four_flavours() {
        assert_eq!(
            classify(true, &cpu(true, false, None), &mods(&["kvm", "kvm_intel"])),
            Flavour::BareMetalVmx
        );
        assert_eq!(
            classify(true, &cpu(false, true, None), &mods(&["kvm", "kvm_amd"])),
            Flavour::BareMetalSvm
        );
        assert_eq!(
            classify(
                true,
                &cpu(true, false, Some("KVM")),
                &mods(&["kvm", "kvm_intel"])
            ),
            Flavour::Nested {
                extension: "vmx".into(),
                outer: "KVM".into()
            }
        );
        assert_eq!(
            classify(
                true,
                &cpu(false, false, Some("KVM")),
                &mods(&["kvm", "kvm_pvm"])
            ),
            Flavour::Software {
                module: "kvm_pvm".into(),
                outer: Some("KVM".into())
            }
        );
        assert_eq!(
            classify(false, &cpu(true, false, None), &mods(&["kvm", "kvm_intel"])),
            Flavour::None
        );
    }

    #[test]
    fn detect_runs_and_prints_everything() {
        let h = detect();
        let text = h.to_string();
        for key in [
            "cpu:",
            "/dev/kvm:",
            "flavour:",
            "tdp_mmu:",
            "perf:",
            "missing",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"flavour\""));
        // What is missing is listed consistently with what was found.
        assert_eq!(
            h.perf.hw_instructions,
            !h.missing
                .iter()
                .any(|m| m.starts_with("hardware performance"))
        );
    }
}
