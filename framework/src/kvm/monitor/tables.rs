//! The monitor's tables, written once by the VMM before any vCPU runs: GDT, TSSes, IDT, the
//! stubs page, the monitor's own page tables, and the shadow pool's mapping.

use std::mem::offset_of;

use shadowlab_abi::layout::{pte, MONITOR_BASE};
use x86_64::structures::gdt::DescriptorFlags;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

use super::code::stub_code;
use super::error::MonitorError;
use super::layout::*;
use crate::kvm::layout::MONITOR_GPA;
use crate::mem::{GuestPhys, MemError, MemRegion};

/// Maps the shadow pool (`pool_bytes` at guest-physical `pool_base`) at [`POOL_VA`] with
/// 2 MiB pages in the monitor's own tables: supervisor-only, writable, not executable. These
/// are VMM-owned tables the host walks, written once before any vCPU runs.
pub fn map_pool(mon: &MemRegion, pool_base: u64, pool_bytes: u64) -> Result<(), MonitorError> {
    let start = pool_base & !(HUGE - 1);
    let end = pool_base
        .checked_add(pool_bytes)
        .and_then(|e| e.checked_add(HUGE - 1))
        .ok_or(MonitorError::PoolTooLarge { pool_bytes })?
        & !(HUGE - 1);
    let chunks = (end - start) / HUGE;
    if chunks > POOL_PDS * 512 {
        return Err(MonitorError::PoolTooLarge { pool_bytes });
    }
    for pd in 0..chunks.div_ceil(512) {
        mon.write_u64(
            PDPT_OFF + (1 + pd) * 8,
            (MONITOR_GPA + POOL_PD_OFF + pd * 0x1000) | pte::P | pte::W,
        )?;
    }
    for i in 0..chunks {
        mon.write_u64(
            POOL_PD_OFF + i * 8,
            (start + i * HUGE) | pte::P | pte::W | pte::PS | pte::A | pte::D | pte::NX,
        )?;
    }
    Ok(())
}

/// System-descriptor type of a busy 64-bit TSS (as KVM_SET_SREGS loads TR), in the type bits
/// (40..44) that [`DescriptorFlags`] names for code and data segments.
const TSS_BUSY_64: u64 = 0xb << 40;

/// A 16-byte 64-bit TSS descriptor (busy, as KVM_SET_SREGS loads TR): x86_64's
/// `Descriptor::SystemSegment` layout, built from `base` (a monitor VA, which the VMM never
/// dereferences; `Descriptor::tss_segment` wants a `&'static` TSS in this address space).
pub(super) fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let limit = u64::from(limit);
    let lo = DescriptorFlags::PRESENT.bits()
        | TSS_BUSY_64
        | (limit & DescriptorFlags::LIMIT_0_15.bits())
        | ((limit << 32) & DescriptorFlags::LIMIT_16_19.bits())
        | ((base << 16) & DescriptorFlags::BASE_0_23.bits())
        | ((base << 32) & DescriptorFlags::BASE_24_31.bits());
    [lo, base >> 32]
}

/// Writes the TSS of a vCPU whose IST stack tops at `top` at `off`: RSP0 and IST1 both point
/// there; no I/O bitmap. Built as x86_64's [`TaskStateSegment`], then written field by field
/// at its `repr(C, packed(4))` offsets (never through a reference into the monitor).
fn write_tss(mon: &MemRegion, off: u64, top: u64) -> Result<(), MemError> {
    let mut tss = TaskStateSegment::new();
    let mut rsp = [VirtAddr::zero(); 3];
    rsp[0] = VirtAddr::new(top);
    tss.privilege_stack_table = rsp;
    let mut ist = [VirtAddr::zero(); 7];
    ist[0] = VirtAddr::new(top);
    tss.interrupt_stack_table = ist;
    // Copies of the packed fields (no references to them).
    let (rsp, ist, iomap_base) = (
        tss.privilege_stack_table,
        tss.interrupt_stack_table,
        tss.iomap_base,
    );
    let at = |field: usize| off + field as u64;
    for (i, a) in rsp.iter().enumerate() {
        let field = offset_of!(TaskStateSegment, privilege_stack_table) + 8 * i;
        mon.write_bytes(at(field), &a.as_u64().to_le_bytes())?;
    }
    for (i, a) in ist.iter().enumerate() {
        let field = offset_of!(TaskStateSegment, interrupt_stack_table) + 8 * i;
        mon.write_bytes(at(field), &a.as_u64().to_le_bytes())?;
    }
    // The bitmap would start past the TSS's end: none.
    let field = offset_of!(TaskStateSegment, iomap_base);
    mon.write_bytes(at(field), &iomap_base.to_le_bytes())
}

// IDT gates follow the bit layout x86_64 documents for `structures::idt::Entry` (handler
// address split 16/16/32, code selector, `EntryOptions`: IST index in bits 0..3, gate type in
// 8..12, DPL in 13..15, present in 15). Its `Entry` itself is not used: setting its handler
// reads this process's CS, and its bytes can only be had by transmuting it.

/// A 16-byte interrupt gate to `handler`, IST1, DPL0 (exceptions only).
pub(super) fn idt_gate(handler: u64) -> [u64; 2] {
    idt_gate_dpl(handler, 0)
}

/// A 16-byte interrupt gate to `handler`, IST1, with the given DPL (3: `int n` from CPL3).
fn idt_gate_dpl(handler: u64, dpl: u64) -> [u64; 2] {
    idt_gate_ist(handler, dpl, 1)
}

/// A 16-byte interrupt gate to `handler` with the given DPL and IST index.
fn idt_gate_ist(handler: u64, dpl: u64, ist: u64) -> [u64; 2] {
    let lo = (handler & 0xffff)
        | (u64::from(CODE_SEL) << 16)
        | (ist << 32)
        | ((0x8e | (dpl << 5)) << 40) // present, DPL, 64-bit interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    [lo, handler >> 32]
}

/// Writes the monitor for `nr_vcpus` vCPUs into `mon` (a [`MONITOR_SIZE`] mapping).
pub fn build(mon: &MemRegion, nr_vcpus: usize) -> Result<(), MemError> {
    // GDT: null, code, data, (unused), then one TSS descriptor per vCPU.
    mon.write_u64(GDT_OFF, 0)?;
    // Flat segments: base 0, limit 0xfffff, G; 64-bit code (L), data (D/B); DPL 0, then 3.
    mon.write_u64(GDT_OFF + 8, DescriptorFlags::KERNEL_CODE64.bits())?;
    mon.write_u64(GDT_OFF + 16, DescriptorFlags::KERNEL_DATA.bits())?;
    mon.write_u64(GDT_OFF + 24, DescriptorFlags::USER_DATA.bits())?;
    mon.write_u64(GDT_OFF + 32, DescriptorFlags::USER_CODE64.bits())?;
    for i in 0..nr_vcpus {
        let tss = MONITOR_BASE + TSS_OFF + i as u64 * TSS_STRIDE;
        let [lo, hi] = tss_descriptor(tss, 103);
        let at = GDT_OFF + u64::from(TSS_SEL0) + 16 * i as u64;
        mon.write_u64(at, lo)?;
        mon.write_u64(at + 8, hi)?;
        write_tss(
            mon,
            TSS_OFF + i as u64 * TSS_STRIDE,
            MONITOR_BASE + ist_top_off(i),
        )?;
    }
    // IDT: vectors 0..32 to their stubs; the rest not present (#GP -> vector 13's stub).
    for v in 0..32u64 {
        let [lo, hi] = idt_gate(MONITOR_BASE + STUBS_OFF + v * STUB_STRIDE);
        mon.write_u64(IDT_OFF + v * 16, lo)?;
        mon.write_u64(IDT_OFF + v * 16 + 8, hi)?;
    }
    let [lo, hi] = idt_gate_ist(replay_entry(), 0, 0);
    mon.write_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16, lo)?;
    mon.write_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16 + 8, hi)?;
    let [lo, hi] = idt_gate_dpl(MONITOR_BASE + STUBS_OFF + NATIVE_OFF, 3);
    mon.write_u64(IDT_OFF + u64::from(NATIVE_GATE_VECTOR) * 16, lo)?;
    mon.write_u64(IDT_OFF + u64::from(NATIVE_GATE_VECTOR) * 16 + 8, hi)?;
    mon.write_bytes(STUBS_OFF, &stub_code())?;
    // Page tables of slot 511: PDPT[0] -> PD[0] -> PT, PT[i] -> monitor page i.
    mon.write_u64(PDPT_OFF, (MONITOR_GPA + PD_OFF) | pte::P | pte::W)?;
    mon.write_u64(PD_OFF, (MONITOR_GPA + PT_OFF) | pte::P | pte::W)?;
    for page in 0..MONITOR_SIZE / 4096 {
        let off = page * 4096;
        let flags = if off == STUBS_OFF {
            pte::P | pte::A // read-only, executable
        } else {
            pte::P | pte::W | pte::A | pte::D | pte::NX
        };
        mon.write_u64(PT_OFF + page * 8, (MONITOR_GPA + off) | flags)?;
    }
    Ok(())
}
