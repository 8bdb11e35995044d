//! Builds the no_std paravirtual guest (`framework/guest`) as part of the normal `cargo build`,
//! and hands its ELF to the framework (`include_bytes!(env!("SHADOWLAB_GUEST_ELF"))`).
//!
//! The guest is a separate cargo workspace (excluded from the root one) because it needs its own
//! rustc flags: no std, no libc, panic=abort, a linker script that places it in the direct map.
//! It is built with the cargo that runs this script, in a target directory under OUT_DIR, so it
//! never contends for the outer build's target-directory lock.
//!
//! Why `relocation-model=pic` and not `static`: the guest is linked at
//! `DIRECT_MAP_BASE + 1 MiB` = 0x7f80_0010_0000, outside both the low and the high 2 GiB,
//! so the small code model's absolute 32-bit relocations (jump tables, address constants) that
//! `static` emits cannot reach it. PIC code addresses everything RIP-relative; linked `-static
//! -no-pie` the result has no dynamic relocations and runs only at its link address, which is
//! what the VMM loads.
//!
//! # The layout knob: `SHADOWLAB_LAYOUT_PAD`
//!
//! `SHADOWLAB_LAYOUT_PAD=N` (a number of bytes, 0 when unset, at most 1 MiB) makes this script
//! write `$OUT_DIR/layout_pad_asm.rs`, which the worker binary (`src/bin/shadowlab-vmm.rs`)
//! includes: a `global_asm!` section `.text.shadowlab_layout_pad` of `N` `int3` bytes between
//! the symbols `shadowlab_layout_pad_start` and `shadowlab_layout_pad_end`. The binary crate's
//! objects come first in the link, the library's (the MMU's) after them, so the padding sits
//! ahead of the MMU's code, which moves by `N` bytes (rounded up to its 16-byte alignment);
//! nothing else changes. It is in the binary crate, not the library, because the linker places
//! a library's objects in the order it pulls them from the archive, which put a pad in the
//! library after the MMU. `$OUT_DIR/layout_pad.rs` gives the library the number
//! (`shadowlab_framework::layout::LAYOUT_PAD`). The worker reports the pad it holds
//! (`shadowlab-vmm --version` prints `layout-pad: N`, measured between the two symbols, and the
//! JSON result has `layout_pad`). Build each layout in its own `CARGO_TARGET_DIR`: cargo
//! rebuilds the crate when the variable changes (`rerun-if-env-changed`), so two layouts in
//! one target dir would rebuild each other in turn.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest address-space layout, shared with the guest and the VMM.
use shadowlab_abi::layout;

/// The largest `SHADOWLAB_LAYOUT_PAD` accepted: far more than any cache or predictor period.
const MAX_LAYOUT_PAD: usize = 1 << 20;

fn main() {
    layout_pad();
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let template = guest_dir.join("guest.ld");
    let script = out_dir.join("guest.ld");

    for p in [
        guest_dir.join("src"),
        guest_dir.join("Cargo.toml"),
        guest_dir.join("Cargo.lock"),
        template.clone(),
        manifest_dir.join("abi/src"),
        manifest_dir.join("abi/Cargo.toml"),
        manifest_dir.join("../experiments/workloads/src"),
        manifest_dir.join("../experiments/workloads/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let text =
        std::fs::read_to_string(&template).expect("build.rs: reading framework/guest/guest.ld");
    let text = text.replace(
        "@DIRECT_MAP_BASE@",
        &format!("{:#x}", layout::DIRECT_MAP_BASE),
    );
    std::fs::write(&script, text).expect("build.rs: writing the guest linker script");

    let flags = [
        "-C".to_string(),
        "panic=abort".to_string(),
        "-C".to_string(),
        "relocation-model=pic".to_string(),
        "-C".to_string(),
        "no-redzone=yes".to_string(),
        "-C".to_string(),
        "link-arg=-nostdlib".to_string(),
        "-C".to_string(),
        "link-arg=-static".to_string(),
        "-C".to_string(),
        "link-arg=-no-pie".to_string(),
        "-C".to_string(),
        format!("link-arg=-T{}", script.display()),
        "-C".to_string(),
        "link-arg=-Wl,--build-id=none".to_string(),
    ];

    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The outer build's settings must not leak into the guest's: its rustflags, a wrapper such
    // as clippy-driver (under `cargo clippy`), its target dir, coverage/profile overrides.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_PROFILE_RELEASE_PANIC",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("build.rs: could not run cargo to build the guest");
    if !status.success() {
        panic!("build.rs: building the guest (framework/guest) failed: {status}");
    }

    let built = target_dir
        .join(TARGET)
        .join("release")
        .join("shadowlab-guest");
    let elf = out_dir.join("shadowlab-guest.elf");
    copy(&built, &elf);
    println!("cargo:rustc-env=SHADOWLAB_GUEST_ELF={}", elf.display());
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!(
            "build.rs: copying the guest ELF {} to {}: {e}",
            from.display(),
            to.display()
        );
    }
}

/// Writes `$OUT_DIR/layout_pad.rs` and `layout_pad_asm.rs` for `SHADOWLAB_LAYOUT_PAD` (see the module docs).
fn layout_pad() {
    println!("cargo:rerun-if-env-changed=SHADOWLAB_LAYOUT_PAD");
    let pad = match env::var("SHADOWLAB_LAYOUT_PAD") {
        Err(env::VarError::NotPresent) => 0,
        Ok(s) if s.trim().is_empty() => 0,
        Ok(s) => match s.trim().parse::<usize>() {
            Ok(n) if n <= MAX_LAYOUT_PAD => n,
            _ => panic!(
                "build.rs: SHADOWLAB_LAYOUT_PAD={s:?} is not a number of bytes in 0..={MAX_LAYOUT_PAD}"
            ),
        },
        Err(e) => panic!("build.rs: SHADOWLAB_LAYOUT_PAD: {e}"),
    };
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // `.fill 0` is valid and emits nothing: the symbols still exist, 0 bytes apart. The
    // section is "ax" (code) so the linker places it among the other `.text.*` input sections,
    // in link order; the symbols are hidden, so nothing outside the binary can see them.
    let code = format!(
        r#"core::arch::global_asm!(
    ".pushsection .text.shadowlab_layout_pad,\"ax\",@progbits",
    ".globl shadowlab_layout_pad_start",
    ".hidden shadowlab_layout_pad_start",
    ".globl shadowlab_layout_pad_end",
    ".hidden shadowlab_layout_pad_end",
    "shadowlab_layout_pad_start:",
    ".fill {pad}, 1, 0xcc",
    "shadowlab_layout_pad_end:",
    ".popsection",
);
unsafe extern "C" {{
    /// The first byte of the padding.
    safe static shadowlab_layout_pad_start: [u8; 0];
    /// One past its last byte.
    safe static shadowlab_layout_pad_end: [u8; 0];
}}
"#
    );
    write_if_changed(&out_dir.join("layout_pad_asm.rs"), &code);
    write_if_changed(
        &out_dir.join("layout_pad.rs"),
        &format!(
            "/// The padding the build placed in the worker's `.text`, bytes (`SHADOWLAB_LAYOUT_PAD`).\npub const LAYOUT_PAD: usize = {pad};\n"
        ),
    );
}

/// Rewrites `path` only when its contents change, so that an unchanged pad rebuilds nothing.
fn write_if_changed(path: &Path, code: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(code) {
        if let Err(e) = std::fs::write(path, code) {
            panic!("build.rs: writing {}: {e}", path.display());
        }
    }
}
