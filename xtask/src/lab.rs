//! `cargo xtask demo` and `cargo xtask bench`: build everything, then run the lab programs of
//! the throttle-tests crate (they need root: network namespaces, XDP, BPF_PROG_TEST_RUN).
use anyhow::{bail, Result};

use crate::{build, cmd, is_root, setup, workspace_root};

/// Benchmark suites.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Suite {
    /// In-kernel cost of the XDP decision against bare XDP_DROP / XDP_PASS programs.
    Xdp,
    /// CPU per packet of a trafgen flood under throttle, nftables, iptables and no filter.
    Flood,
    /// From `throttle-ctl reload` to the new limit seen in traffic, for 10 to 10000 rules.
    Reload,
    /// Every suite above, one after the other.
    All,
}

impl Suite {
    fn names(self) -> &'static [&'static str] {
        match self {
            Suite::Xdp => &["xdp"],
            Suite::Flood => &["flood"],
            Suite::Reload => &["reload"],
            Suite::All => &["xdp", "flood", "reload"],
        }
    }
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP, BPF): run it as root or under sudo");
    }
    Ok(())
}

fn run_lab_binary(bin: &str, release: bool, args: &[&str]) -> Result<()> {
    let mut cargo = cmd::cargo();
    cargo.current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "-p",
        "throttle-tests",
        "--bin",
        bin,
    ]);
    if release {
        // Measured as deployed: the release daemon and CLI.
        cargo.arg("--release").env(
            "THROTTLE_CTL_BIN",
            workspace_root().join("target/release/throttle-ctl"),
        );
    }
    cmd::run(cargo.arg("--").args(args))
}

pub fn demo() -> Result<()> {
    require_root("the demo")?;
    setup::setup(false)?;
    build::build(false)?;
    run_lab_binary("throttle-demo", false, &[])
}

pub fn bench(suite: Suite) -> Result<()> {
    require_root("benchmarking")?;
    setup::setup(false)?;
    build::build(true)?;
    for name in suite.names() {
        run_lab_binary("throttle-bench", true, &[name])?;
    }
    Ok(())
}
