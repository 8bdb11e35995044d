//! The monitor's tables, written once by the VMM before any vCPU runs: GDT, TSSes, IDT, the
//! stubs page, the monitor's own page tables, and the shadow pool's mapping.

use shadowlab_workloads::layout::{pte, MONITOR_BASE};

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

fn gdt_code64() -> u64 {
    // base 0, limit 0xfffff, G, L, P, DPL0, S, type 0xb (execute/read, accessed).
    0x00af_9b00_0000_ffff
}

fn gdt_data() -> u64 {
    // base 0, limit 0xfffff, G, D/B, P, DPL0, S, type 0x3 (read/write, accessed).
    0x00cf_9300_0000_ffff
}

fn gdt_user_data() -> u64 {
    // As gdt_data with DPL3.
    0x00cf_f300_0000_ffff
}

fn gdt_user_code64() -> u64 {
    // As gdt_code64 with DPL3.
    0x00af_fb00_0000_ffff
}

/// A 16-byte 64-bit TSS descriptor (busy, as KVM_SET_SREGS loads TR).
pub(super) fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let lo = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0xb << 40) // type: busy 64-bit TSS
        | (1 << 47) // present
        | (u64::from((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [lo, base >> 32]
}

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
    mon.write_u64(GDT_OFF + 8, gdt_code64())?;
    mon.write_u64(GDT_OFF + 16, gdt_data())?;
    mon.write_u64(GDT_OFF + 24, gdt_user_data())?;
    mon.write_u64(GDT_OFF + 32, gdt_user_code64())?;
    for i in 0..nr_vcpus {
        let tss = MONITOR_BASE + TSS_OFF + i as u64 * TSS_STRIDE;
        let [lo, hi] = tss_descriptor(tss, 103);
        let at = GDT_OFF + u64::from(TSS_SEL0) + 16 * i as u64;
        mon.write_u64(at, lo)?;
        mon.write_u64(at + 8, hi)?;
        // TSS: RSP0 and IST1 both point at this vCPU's IST stack; no I/O bitmap.
        let toff = TSS_OFF + i as u64 * TSS_STRIDE;
        let top = MONITOR_BASE + ist_top_off(i);
        mon.write_bytes(toff + 4, &top.to_le_bytes())?; // RSP0
        mon.write_bytes(toff + 36, &top.to_le_bytes())?; // IST1
        mon.write_bytes(toff + 102, &104u16.to_le_bytes())?; // I/O map base: none
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
