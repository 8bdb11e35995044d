//! The per-vCPU entry point.

use shadowlab_abi::{BootInfo, BOOT_MAGIC};

// `_start` is what the ELF entry names. The VMM sets RSP to the vCPU's stack top (16-byte
// aligned); the `call` pushes the return address so `guest_main` sees the ABI's alignment.
// Nothing returns from guest_main; the hlt loop is a backstop.
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call {main}",
    "2:  hlt",
    "    jmp 2b",
    main = sym guest_main,
);

/// Rust entry of every vCPU: `vcpu` is its index, `boot` the direct-map address of the
/// boot-info page.
extern "sysv64" fn guest_main(vcpu: u64, boot: *const BootInfo) -> ! {
    // SAFETY: the VMM wrote the boot-info page before starting any vCPU and never writes it
    // again; it lies in guest RAM, mapped by the direct map we run on. A volatile read copies it
    // out so nothing later depends on the page staying unchanged.
    let info: BootInfo = unsafe { core::ptr::read_volatile(boot) };
    crate::ucall::set_hypercall_mmio(info.hypercall_mmio != 0);
    if info.magic != BOOT_MAGIC {
        crate::ucall::abort(
            file!(),
            line!(),
            format_args!("bad boot-info magic {:#x}", info.magic),
        );
    }
    if vcpu >= info.nr_vcpus || vcpu as usize >= info.vcpus.len() {
        crate::ucall::abort(
            file!(),
            line!(),
            format_args!(
                "vCPU index {vcpu} out of range (nr_vcpus {})",
                info.nr_vcpus
            ),
        );
    }
    let mut cpu = crate::cpu::GuestCpu::new(vcpu as usize, &info);
    crate::programs::run(&mut cpu, &info)
}
