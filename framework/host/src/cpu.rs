//! The host CPU, read with `raw-cpuid`.

use std::fmt;

use raw_cpuid::{CpuId, Hypervisor};
use serde::{Deserialize, Serialize};

/// What the framework needs to know about the CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuDesc {
    /// Vendor string (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// Brand string.
    pub brand: String,
    /// Family, model, stepping.
    pub family_model_stepping: (u8, u8, u8),
    /// CPUID.1:ECX.VMX.
    pub has_vmx: bool,
    /// CPUID.80000001h:ECX.SVM.
    pub has_svm: bool,
    /// The hypervisor this host itself runs under (CPUID.1:ECX.HV and leaf 0x40000000).
    pub hypervisor: Option<String>,
    /// Invariant (constant, non-stop) TSC.
    pub invariant_tsc: bool,
}

impl CpuDesc {
    /// Reads the running CPU.
    pub fn detect() -> Self {
        let c = CpuId::new();
        let fi = c.get_feature_info();
        let ext = c.get_extended_processor_and_feature_identifiers();
        let hypervisor = if fi.as_ref().is_some_and(|f| f.has_hypervisor()) {
            Some(match c.get_hypervisor_info().map(|h| h.identify()) {
                Some(Hypervisor::Unknown(a, b, d)) => {
                    let bytes: Vec<u8> = [a, b, d].iter().flat_map(|w| w.to_le_bytes()).collect();
                    format!(
                        "unknown ({})",
                        String::from_utf8_lossy(&bytes).trim_matches('\0')
                    )
                }
                Some(h) => format!("{h:?}"),
                None => "unknown".to_string(),
            })
        } else {
            None
        };
        Self {
            vendor: c
                .get_vendor_info()
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            brand: c
                .get_processor_brand_string()
                .map(|b| b.as_str().trim().to_string())
                .unwrap_or_default(),
            family_model_stepping: fi
                .as_ref()
                .map(|f| (f.family_id(), f.model_id(), f.stepping_id()))
                .unwrap_or_default(),
            has_vmx: fi.as_ref().is_some_and(|f| f.has_vmx()),
            has_svm: ext.as_ref().is_some_and(|e| e.has_svm()),
            hypervisor,
            invariant_tsc: c
                .get_advanced_power_mgmt_info()
                .is_some_and(|a| a.has_invariant_tsc()),
        }
    }
}

impl fmt::Display for CpuDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (fa, mo, st) = self.family_model_stepping;
        write!(
            f,
            "{} ({}, family {fa:#x} model {mo:#x} stepping {st})",
            self.brand, self.vendor
        )?;
        write!(
            f,
            "; vmx {} svm {}; invariant TSC {}",
            self.has_vmx, self.has_svm, self.invariant_tsc
        )?;
        if let Some(h) = &self.hypervisor {
            write!(f, "; runs under {h}")?;
        }
        Ok(())
    }
}
