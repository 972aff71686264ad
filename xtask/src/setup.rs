//! `cargo xtask setup`: provisions the eBPF toolchain on Debian/Ubuntu (see
//! /work/shared/toolchain.md for why Debian's rustc and prebuilt bpf core are used).
//! Idempotent: only what is missing is installed.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cargo_bin_dir, cmd, find_in_path, is_root};

/// Toolchain (rustc-web, prebuilt core for bpf, LLVM for bpf-linker), then test/bench tools.
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "netsniff-ng",
    "nftables",
    "iptables",
    // promtool, which checks the metrics exposition in the host tier.
    "prometheus",
    // The font of the benchmark chart.
    "fonts-dejavu-core",
];
/// Debian's rustc (from rustc-web): the rustup toolchain has no core for the bpf targets.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const BPF_TARGET: &str = "bpfel-unknown-none";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz drives the fuzz tier (its libFuzzer runs on the stable toolchain with
/// RUSTC_BOOTSTRAP=1).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn setup(dry_run: bool) -> Result<()> {
    let root = is_root();
    let debian = Path::new("/etc/debian_version").exists()
        && find_in_path("apt-get").is_some()
        && find_in_path("dpkg-query").is_some();
    if !debian {
        print_manual(APT_PACKAGES, true, root);
        bail!(
            "not a Debian/Ubuntu system (no /etc/debian_version or no apt-get): \
             provision the eBPF toolchain by hand, the commands above are for Debian/Ubuntu"
        );
    }

    let missing = missing_packages()?;
    let linker = find_bpf_linker();
    let linker_ok = matches!(&linker, Some((_, v)) if supported_linker(v));

    if missing.is_empty() {
        println!(
            "setup: Debian packages already provisioned: {}",
            APT_PACKAGES.join(" ")
        );
    } else {
        println!("setup: missing Debian packages: {}", missing.join(" "));
    }
    match &linker {
        Some((path, v)) if linker_ok => {
            println!(
                "setup: bpf-linker {v} already provisioned ({})",
                path.display()
            )
        }
        Some((path, v)) => println!(
            "setup: {} is bpf-linker {v}, need {BPF_LINKER_VERSION}",
            path.display()
        ),
        None => println!(
            "setup: bpf-linker not found (in {} or PATH)",
            cargo_bin_dir().display()
        ),
    }

    if dry_run {
        if missing.is_empty() && linker_ok {
            check_bpf_core()?;
            println!("setup (dry run): nothing to do");
        } else {
            println!("setup (dry run): would run:");
            for line in commands(&missing, !linker_ok, root) {
                println!("    {line}");
            }
        }
        return Ok(());
    }
    if !missing.is_empty() && !root {
        print_manual(&missing, !linker_ok, root);
        bail!("installing Debian packages needs root: run the commands above, or `sudo cargo xtask setup`");
    }

    if !missing.is_empty() {
        println!("setup: installing {}", missing.join(" "));
        for mut c in apt_commands(&missing) {
            cmd::run(c.stdin(Stdio::null()))?;
        }
        let still = missing_packages()?;
        if !still.is_empty() {
            bail!(
                "still not installed after apt-get install: {}",
                still.join(" ")
            );
        }
    }
    if !linker_ok {
        install_bpf_linker()?;
    }
    check_bpf_core()?;
    ensure_cargo_fuzz()
}

/// Installs cargo-fuzz unless this version is there.
fn ensure_cargo_fuzz() -> Result<()> {
    let version = Command::new(cmd::cargo().get_program())
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if version.ends_with(CARGO_FUZZ_VERSION) {
        println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} already provisioned");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (for the fuzz tier)");
    let mut install = cmd::cargo();
    install.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]);
    cmd::run(install.stdin(Stdio::null()))
}

/// Packages of `wanted` that `dpkg-query -W -f='${Package}\t${Status}\n'` output does not show
/// as installed. Packages dpkg does not know at all are absent from the output.
pub fn missing_from_dpkg(wanted: &[&str], dpkg_output: &str) -> Vec<String> {
    let installed: Vec<&str> = dpkg_output
        .lines()
        .filter_map(|line| {
            let (package, status) = line.split_once('\t')?;
            // Status is "want ok state"; removed packages keep "config-files" state.
            (status.split_whitespace().nth(2) == Some("installed")).then_some(package.trim())
        })
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect()
}

fn missing_packages() -> Result<Vec<String>> {
    // Exits 1 when some package is unknown: the output still lists the others.
    let out = cmd::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\\t${Status}\\n"])
            .args(APT_PACKAGES),
    )?;
    Ok(missing_from_dpkg(
        APT_PACKAGES,
        &String::from_utf8_lossy(&out.stdout),
    ))
}

/// The version in `bpf-linker --version` output ("bpf-linker 0.13.0").
pub fn parse_linker_version(output: &str) -> Option<&str> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "bpf-linker").then(|| words.next())?
    })
}

pub fn supported_linker(version: &str) -> bool {
    version.starts_with("0.13.")
}

/// The bpf-linker a build would use ($CARGO_HOME/bin comes first, see build-ebpf) and its
/// version, or "unknown" when it does not run (e.g. its libLLVM is gone).
pub fn find_bpf_linker() -> Option<(PathBuf, String)> {
    let installed = cargo_bin_dir().join("bpf-linker");
    let path = Some(installed)
        .filter(|p| p.is_file())
        .or_else(|| find_in_path("bpf-linker"))?;
    let version = match cmd::output(Command::new(&path).arg("--version")) {
        Ok(out) if out.status.success() => {
            parse_linker_version(&String::from_utf8_lossy(&out.stdout)).map(str::to_owned)
        }
        _ => None,
    };
    Some((
        path,
        version.unwrap_or_else(|| "unknown (does not run)".into()),
    ))
}

fn apt_commands(missing: &[String]) -> Vec<Command> {
    let mut update = Command::new("apt-get");
    update.arg("update");
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(missing);
    vec![update, install]
}

/// `cargo install bpf-linker` against Debian's LLVM 22. `--force` replaces a wrong or broken
/// one that cargo would otherwise consider installed.
fn linker_command(cargo: &str, locked: bool) -> Command {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
    paths.extend(env::split_paths(&path));
    let mut c = Command::new(cargo);
    c.env("LLVM_PREFIX", LLVM_PREFIX)
        .env(
            "PATH",
            env::join_paths(paths).expect("PATH entries have no ':'"),
        )
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
    if locked {
        c.arg("--locked");
    }
    c.args(["--no-default-features", "--features", "llvm-22"]);
    c
}

fn install_bpf_linker() -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (builds against LLVM 22, takes a few minutes)");
    let locked = cmd::run(linker_command(&cargo, true).stdin(Stdio::null()));
    if let Err(e) = locked {
        println!("setup: {e:#}; retrying without --locked");
        cmd::run(linker_command(&cargo, false).stdin(Stdio::null()))?;
    }
    match find_bpf_linker() {
        Some((_, v)) if supported_linker(&v) => Ok(()),
        other => bail!("bpf-linker still not {BPF_LINKER_VERSION} after cargo install: {other:?}"),
    }
}

/// libstd-rust-web-dev-bpf puts a prebuilt core where Debian's rustc looks for it
/// (/usr/lib/rustlib/bpfel-unknown-none/lib); ask rustc rather than assume.
fn check_bpf_core() -> Result<()> {
    if !Path::new(DEBIAN_RUSTC).is_file() {
        bail!("{DEBIAN_RUSTC} is missing although rustc-web is installed");
    }
    let out = cmd::output(Command::new(DEBIAN_RUSTC).args([
        "--print",
        "target-libdir",
        "--target",
        BPF_TARGET,
    ]))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has_core = out.status.success()
        && fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok())
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            });
    if !has_core {
        bail!(
            "no core for {BPF_TARGET} in {} (libstd-rust-web-dev-bpf should provide it: see `dpkg -L libstd-rust-web-dev-bpf`)",
            dir.display()
        );
    }
    println!("setup: core for {BPF_TARGET} present ({})", dir.display());
    Ok(())
}

/// Prints the commands that provision what is missing, to run by hand.
fn print_manual(missing: &[impl AsRef<str>], linker: bool, root: bool) {
    eprintln!("To provision the eBPF toolchain by hand, run:");
    for line in commands(missing, linker, root) {
        eprintln!("    {line}");
    }
}

/// The command lines that provision the missing packages and bpf-linker.
fn commands(missing: &[impl AsRef<str>], linker: bool, root: bool) -> Vec<String> {
    let sudo = if root { "" } else { "sudo " };
    let mut lines = Vec::new();
    if !missing.is_empty() {
        let missing: Vec<String> = missing.iter().map(|p| p.as_ref().to_owned()).collect();
        for c in apt_commands(&missing) {
            lines.push(format!("{sudo}{}", cmd::display(&c)));
        }
    }
    if linker {
        lines.push(cmd::display(&linker_command("cargo", true)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linker_version_from_version_line() {
        assert_eq!(parse_linker_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(
            parse_linker_version("warning: x\nbpf-linker 0.9.15"),
            Some("0.9.15")
        );
        assert_eq!(parse_linker_version("something else 0.13.0"), None);
        assert_eq!(parse_linker_version("bpf-linker"), None);
        assert!(supported_linker("0.13.0") && supported_linker("0.13.2"));
        assert!(!supported_linker("0.9.15") && !supported_linker("0.1.13"));
    }

    #[test]
    fn missing_packages_from_dpkg_output() {
        let out = "rustc-web\tinstall ok installed\n\
                   bpftool\tdeinstall ok config-files\n\
                   iproute2\thold ok installed\n\
                   nftables\tunknown ok not-installed\n";
        assert_eq!(
            missing_from_dpkg(
                &["rustc-web", "bpftool", "iproute2", "nftables", "iptables"],
                out
            ),
            ["bpftool", "nftables", "iptables"]
        );
        assert!(missing_from_dpkg(&["iproute2"], out).is_empty());
    }
}
