//! `cargo xtask build-ebpf` and `cargo xtask build`.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    cargo_bin_dir, cmd,
    setup::{find_bpf_linker, supported_linker, BPF_TARGET, DEBIAN_RUSTC},
    workspace_root,
};

/// Env vars of the outer cargo or the user's shell that would break the bpf build: flags for
/// the host (they override throttle-ebpf/.cargo/config.toml), another target or target dir,
/// a wrapper that may not handle Debian's rustc.
const EBPF_SCRUBBED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
];

/// Builds throttle-ebpf and returns the path of the object.
pub fn build_ebpf(release: bool) -> Result<PathBuf> {
    if !Path::new(DEBIAN_RUSTC).is_file() {
        bail!("{DEBIAN_RUSTC} (Debian's rustc-web) is missing: run `cargo xtask setup` first");
    }
    match find_bpf_linker() {
        None => bail!("bpf-linker is not installed: run `cargo xtask setup` first"),
        Some((path, v)) if !supported_linker(&v) => bail!(
            "{} is bpf-linker {v}, need 0.13 (built against LLVM 22): run `cargo xtask setup` first",
            path.display()
        ),
        Some(_) => {}
    }
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");

    // bpf-linker is usually in $CARGO_HOME/bin, which need not be in PATH (sudo, CI).
    let mut path = vec![cargo_bin_dir()];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));

    let mut cargo = cmd::cargo();
    for var in EBPF_SCRUBBED_VARS {
        cargo.env_remove(var);
    }
    cargo
        .current_dir(root.join("throttle-ebpf"))
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf enables `asm_experimental_arch` on the bpf target.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", env::join_paths(path).context("PATH")?)
        .args(["build", "--locked", "--target", BPF_TARGET, "--target-dir"])
        .arg(&target_dir);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;

    let profile = if release { "release" } else { "debug" };
    let object = target_dir.join(BPF_TARGET).join(profile).join("throttle");
    let size = fs::metadata(&object)
        .with_context(|| format!("eBPF object {} not found after the build", object.display()))?
        .len();
    println!("eBPF object: {} ({size} bytes)", object.display());
    Ok(object)
}

/// Builds the release XDP object (which throttle-ctl's build.rs embeds), then throttle-ctl.
pub fn build(release: bool) -> Result<()> {
    build_ebpf(true)?;
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(workspace_root())
        .args(["build", "-p", "throttle-ctl"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}
