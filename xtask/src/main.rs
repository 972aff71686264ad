//! `cargo xtask`: provisions the eBPF toolchain, builds the XDP object and throttle-ctl, runs
//! the test tiers, the demo lab and the benchmarks. See `cargo xtask --help`.
mod build;
mod cmd;
mod lab;
mod setup;
mod test;

use std::{
    env,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "throttle's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (Debian packages, bpf-linker); needs root on Debian/Ubuntu.
    Setup {
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the XDP program (throttle-ebpf) for bpfel-unknown-none with Debian's rustc.
    BuildEbpf {
        /// Build the dev profile instead of release (throttle-ctl embeds the release object).
        #[arg(long)]
        debug: bool,
    },
    /// Build the XDP program, then throttle-ctl with the object embedded.
    Build {
        /// Build throttle-ctl in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the XDP program, then run the test tiers (host, kernel, e2e).
    Test(test::Args),
    /// Build a namespace lab, run throttle-ctl in it, flood it and print the counters (root).
    Demo,
    /// Run each cargo-fuzz target (config parser, reference packet parser) for a while.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Run a benchmark suite; writes docs/bench/latest.json and docs/benchmarks.md (root).
    Bench {
        #[arg(value_enum, default_value_t = lab::Suite::Xdp)]
        suite: lab::Suite,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup { dry_run } => setup::setup(dry_run),
        Task::BuildEbpf { debug } => build::build_ebpf(!debug).map(drop),
        Task::Build { release } => build::build(release),
        Task::Test(args) => test::test(args),
        Task::Demo => lab::demo(),
        Task::Fuzz { seconds } => {
            setup::setup(false).and_then(|()| test::fuzz(test::FuzzBudget::Seconds(seconds)))
        }
        Task::Bench { suite } => lab::bench(suite),
    };
    // The context chain on one line; anyhow's Debug adds a backtrace under RUST_BACKTRACE.
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Where `cargo install` puts binaries: $CARGO_HOME/bin, by default ~/.cargo/bin.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `name` found in PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_args_after_double_dash_are_kept_verbatim() {
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--tier",
            "kernel,host",
            "--tier",
            "e2e",
            "--",
            "window",
            "--",
            "--nocapture",
        ])
        .unwrap();
        let Task::Test(args) = cli.task else {
            panic!("not test")
        };
        assert_eq!(
            args.tiers,
            [test::Tier::Kernel, test::Tier::Host, test::Tier::E2e]
        );
        assert_eq!(args.extra, ["window", "--", "--nocapture"]);
    }
}
