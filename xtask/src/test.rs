//! `cargo xtask test`: setup, XDP object, then the test tiers in order with a summary.
use std::{
    fmt,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::{build, cmd, is_root, setup, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Tiers to run (repeatable or comma-separated); default: all, in order.
    #[arg(long = "tier", value_enum, value_delimiter = ',')]
    pub tiers: Vec<Tier>,
    /// Passed on to every `cargo test`: `-- [CARGO_TEST_ARGS] [-- TEST_BINARY_ARGS]`,
    /// e.g. `-- window` (filter) or `-- -- --nocapture`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Tier {
    Host,
    Kernel,
    E2e,
    Fuzz,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Host, Tier::Kernel, Tier::E2e, Tier::Fuzz];

    fn needs_root(self) -> bool {
        matches!(self, Tier::Kernel | Tier::E2e)
    }

    fn number(self) -> usize {
        self as usize + 1
    }

    fn title(self) -> &'static str {
        match self {
            Tier::Host => "host (unit + property tests)",
            Tier::Kernel => "kernel (XDP program in the running kernel)",
            Tier::E2e => "end-to-end (the daemon and traffic through network namespaces)",
            Tier::Fuzz => "fuzz (a short cargo-fuzz run of each target)",
        }
    }

    /// `cargo test` arguments, and the test binary's arguments (after `--`).
    fn cargo_args(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Tier::Host | Tier::Fuzz => (&["--workspace", "--exclude", "throttle-tests"], &[]),
            // Tests in these tiers share interfaces and the BPF filesystem: one at a time.
            Tier::Kernel => (
                &[
                    "-p",
                    "throttle-tests",
                    // The helpers' own tests (packet builders, the benchmark chart).
                    "--lib",
                    "--test",
                    "kernel",
                    "--test",
                    "differential",
                ],
                // --nocapture: the differential test prints its DIFFERENTIAL summary line.
                &["--test-threads=1", "--nocapture"],
            ),
            Tier::E2e => (
                &[
                    "-p",
                    "throttle-tests",
                    "--test",
                    "e2e",
                    "--test",
                    "daemon",
                    "--test",
                    "churn",
                    "--test",
                    "reload",
                    "--test",
                    "flood",
                ],
                &["--test-threads=1", "--nocapture"],
            ),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.to_possible_value().expect("no skipped variants");
        write!(f, "tier {} {}", self.number(), name.get_name())
    }
}

enum Outcome {
    Passed(Duration),
    Failed(Duration, String),
    Skipped(&'static str),
}

/// The tiers to run, in tier order, each once; none asked means all.
pub fn selected(asked: &[Tier]) -> Vec<Tier> {
    let mut tiers = if asked.is_empty() {
        Tier::ALL.to_vec()
    } else {
        asked.to_vec()
    };
    tiers.sort();
    tiers.dedup();
    tiers
}

/// How long each fuzz target runs: a fixed number of inputs from a fixed seed within
/// `cargo xtask test` (the same run on every machine, so CI is repeatable), or a time.
#[derive(Clone, Copy, Debug)]
pub enum FuzzBudget {
    Runs(u64),
    Seconds(u64),
}

/// The fuzz tier of `cargo xtask test`: about 15 s per target here.
const FUZZ_IN_TEST: FuzzBudget = FuzzBudget::Runs(40_000);
/// The cargo-fuzz targets (tests/fuzz/fuzz_targets) and the seed directory of each.
const FUZZ_TARGETS: [(&str, &str); 2] =
    [("config", "configs"), ("packet", "tests/fuzz/seeds/packet")];

/// Runs every fuzz target within `budget`; a crash fails with the artifact's path in the output.
pub fn fuzz(budget: FuzzBudget) -> Result<()> {
    println!("fuzz: building the targets with libFuzzer instrumentation (minutes on a fresh clone), then {budget:?} each");
    for (target, seeds) in FUZZ_TARGETS {
        let corpus = format!("tests/fuzz/corpus/{target}");
        std::fs::create_dir_all(workspace_root().join(&corpus))?;
        let mut cargo = cmd::cargo();
        cargo
            .current_dir(workspace_root())
            // libFuzzer's instrumentation flags are unstable; the stable compiler takes them so.
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                "--fuzz-dir",
                "tests/fuzz",
                target,
                &corpus,
                seeds,
                "--",
            ])
            .args(match budget {
                FuzzBudget::Runs(n) => vec![format!("-runs={n}"), "-seed=1".to_string()],
                FuzzBudget::Seconds(s) => vec![format!("-max_total_time={s}")],
            })
            .arg("-rss_limit_mb=2048");
        // libFuzzer reports every new input: keep the tail, unless it failed.
        let out = cmd::output(&mut cargo).with_context(|| format!("fuzz target {target}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let shown = if out.status.success() {
            &lines[lines.len().saturating_sub(3)..]
        } else {
            &lines[..]
        };
        println!("{}", shown.join("\n"));
        if !out.status.success() {
            bail!("fuzz target {target} failed ({}): the crashing input is under tests/fuzz/artifacts/{target}", out.status);
        }
    }
    Ok(())
}

/// Splits pass-through args like cargo does: `cargo test` args, then after `--` the test
/// binary's args.
pub fn split_extra(extra: &[String]) -> (&[String], &[String]) {
    match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[]),
    }
}

/// The `cargo test` command line for `tier` (without the cargo program), extra args included.
pub fn test_args(tier: Tier, extra: &[String]) -> Vec<String> {
    let (cargo_extra, binary_extra) = split_extra(extra);
    let (cargo_args, binary_args) = tier.cargo_args();
    let mut args = vec!["test".to_owned()];
    args.extend(cargo_args.iter().map(|a| a.to_string()));
    args.extend(cargo_extra.iter().cloned());
    if !binary_args.is_empty() || !binary_extra.is_empty() {
        args.push("--".into());
        args.extend(binary_args.iter().map(|a| a.to_string()));
        args.extend(binary_extra.iter().cloned());
    }
    args
}

pub fn test(args: Args) -> Result<()> {
    setup::setup(false)?;
    // The XDP object, and the throttle-ctl binary (embedding it) that the e2e tier runs.
    build::build(false)?;

    let root = is_root();
    let mut results = Vec::new();
    for tier in selected(&args.tiers) {
        println!("\n== tier {}: {} ==", tier.number(), tier.title());
        let outcome = if tier == Tier::Fuzz {
            let start = Instant::now();
            match fuzz(FUZZ_IN_TEST) {
                Ok(()) => Outcome::Passed(start.elapsed()),
                Err(e) => Outcome::Failed(start.elapsed(), format!("{e:#}")),
            }
        } else if tier.needs_root() && !root {
            println!(
                "SKIPPED tier {}: needs root (run as root or under sudo)",
                tier.number()
            );
            Outcome::Skipped("needs root")
        } else {
            let mut cargo = cmd::cargo();
            cargo
                .current_dir(workspace_root())
                .args(test_args(tier, &args.extra));
            if tier != Tier::Host {
                // Root-only tests then fail instead of skipping.
                cargo.env("THROTTLE_TEST_ROOT_REQUIRED", "1");
            }
            if root {
                // setup has installed the test tools (promtool): tests that use them then fail
                // instead of skipping.
                cargo.env("THROTTLE_TEST_TOOLS_REQUIRED", "1");
            }
            run_tier(&mut cargo)
        };
        results.push((tier, outcome));
    }

    println!("\n== summary ==");
    let mut failed = 0;
    for (tier, outcome) in &results {
        match outcome {
            Outcome::Passed(t) => println!("{tier}: passed ({:.1}s)", t.as_secs_f64()),
            Outcome::Failed(t, why) => {
                failed += 1;
                println!("{tier}: FAILED, {why} ({:.1}s)", t.as_secs_f64())
            }
            Outcome::Skipped(why) => println!("{tier}: SKIPPED, {why}"),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} test tier(s) failed", results.len());
    }
    Ok(())
}

fn run_tier(cargo: &mut Command) -> Outcome {
    let start = Instant::now();
    match cmd::status(cargo) {
        Ok(status) if status.success() => Outcome::Passed(start.elapsed()),
        Ok(status) => Outcome::Failed(start.elapsed(), status.to_string()),
        Err(e) => Outcome::Failed(start.elapsed(), format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn tiers_run_in_order_once() {
        assert_eq!(selected(&[]), Tier::ALL);
        assert!(Tier::Kernel.needs_root() && !Tier::Fuzz.needs_root());
        assert_eq!(
            selected(&[Tier::E2e, Tier::Host, Tier::E2e]),
            [Tier::Host, Tier::E2e]
        );
    }

    #[test]
    fn extra_args_go_before_and_after_the_tier_separator() {
        assert_eq!(
            test_args(Tier::Kernel, &strings(&["window", "--", "--exact"])),
            strings(&[
                "test",
                "-p",
                "throttle-tests",
                "--lib",
                "--test",
                "kernel",
                "--test",
                "differential",
                "window",
                "--",
                "--test-threads=1",
                "--nocapture",
                "--exact",
            ])
        );
        assert_eq!(
            test_args(Tier::Host, &[]),
            strings(&["test", "--workspace", "--exclude", "throttle-tests"])
        );
        assert_eq!(
            test_args(Tier::Host, &strings(&["--", "--ignored"])),
            strings(&[
                "test",
                "--workspace",
                "--exclude",
                "throttle-tests",
                "--",
                "--ignored"
            ])
        );
    }
}
