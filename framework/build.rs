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

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest address-space layout, shared with the guest and the VMM.
use shadowlab_abi::layout;

fn main() {
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
