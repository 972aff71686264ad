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
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP, BPF): run it as root or under sudo");
    }
    Ok(())
}

fn run_lab_binary(bin: &str, args: &[&str]) -> Result<()> {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(workspace_root())
        .args(["run", "--quiet", "-p", "throttle-tests", "--bin", bin, "--"])
        .args(args);
    cmd::run(&mut cargo)
}

pub fn demo() -> Result<()> {
    require_root("the demo")?;
    setup::setup(false)?;
    build::build(false)?;
    run_lab_binary("throttle-demo", &[])
}

pub fn bench(suite: Suite) -> Result<()> {
    require_root("benchmarking")?;
    setup::setup(false)?;
    build::build(false)?;
    match suite {
        Suite::Xdp => run_lab_binary("throttle-bench", &["xdp"]),
        Suite::Flood => run_lab_binary("throttle-bench", &["flood"]),
    }
}
