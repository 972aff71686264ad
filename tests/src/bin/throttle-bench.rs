//! `throttle-bench xdp`: in-kernel cost of throttle's XDP decision under BPF_PROG_TEST_RUN,
//! as ratios against bare XDP_DROP / XDP_PASS programs measured in the same run.
//! Run through `cargo xtask bench` (needs root). Writes docs/bench/latest.json and the table
//! in docs/benchmarks.md.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use throttle_ctl::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
};
use throttle_tests::packet::{Packet, L4};

/// Runs per measurement for the repeated paths.
const REPEAT: u32 = 1_000_000;
/// Distinct sources for the new-source path (one run each: a source is new only once).
const NEW_SOURCES: u32 = 200_000;
/// Rounds, interleaved; the median is reported.
const ROUNDS: usize = 5;

/// Every path below also consults the allow and deny tries, as a production config would.
const CONFIG: &str = "
rules:
  - {name: admit, protocol: udp, port: 9000, limit: 8796093022208, window: 1s}
  - {name: over-quota, protocol: udp, port: 9001, limit: 10, window: 1h}
  - {name: new-sources, protocol: udp, port: 9002, limit: 1000, window: 1s}
allow: [198.19.100.0/24]
deny: [{cidr: 198.19.66.0/24}]
";

struct Measurement {
    name: &'static str,
    what: &'static str,
    value: f64,
    baseline_name: &'static str,
    baseline: f64,
}

fn ns_per_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<f64> {
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    // The kernel's figure: mean time in the program per run, in whole ns. (Timing the call
    // from here would add about 14 ns of harness per run to both sides and flatter the ratio.)
    Ok(r.duration.as_nanos() as f64)
}

/// Mean ns per single run over distinct frames (each run with repeat = 1), as the kernel
/// timed it (a syscall per run would swamp a wall-clock figure).
fn ns_per_distinct_run(program: &Xdp, frames: &[Vec<u8>]) -> Result<f64> {
    let mut total = Duration::ZERO;
    for f in frames {
        total += program
            .test_run(TestRunOptions {
                data_in: Some(f),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?
            .duration;
    }
    Ok(total.as_nanos() as f64 / frames.len() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn udp(src: [u8; 4], port: u16) -> Vec<u8> {
    Packet::v4(src, L4::Udp { dport: port }).build()
}

fn run_xdp() -> Result<Vec<Measurement>> {
    let baseline_path = std::env::var_os("THROTTLE_BASELINE_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/baseline")
        });
    let mut baseline = Ebpf::load_file(&baseline_path).with_context(|| {
        format!(
            "loading {} (run `cargo xtask build-ebpf`)",
            baseline_path.display()
        )
    })?;
    for name in ["xdp_drop", "xdp_pass"] {
        let p: &mut Xdp = baseline
            .program_mut(name)
            .context("baseline program")?
            .try_into()?;
        p.load()?;
    }
    let drop: &Xdp = baseline
        .program("xdp_drop")
        .context("xdp_drop")?
        .try_into()?;
    let pass: &Xdp = baseline
        .program("xdp_pass")
        .context("xdp_pass")?
        .try_into()?;

    let config = Config::from_yaml(CONFIG)?;
    let mut dp = Dataplane::load(LoadOptions {
        max_sources: NEW_SOURCES * 2,
        test_clock: false,
        pin_dir: None,
    })?;
    dp.apply(&config, &[])?;
    let throttle = dp.program()?;

    let hit_admit = udp([198, 18, 0, 2], 9000);
    let hit_over = udp([198, 18, 0, 2], 9001);
    let no_rule = udp([198, 18, 0, 2], 80);
    // Two variants of the over-quota hit, to show where its time goes: without the access
    // list (no trie lookup), and with the clock read replaced by a map value (the test clock).
    let no_acl_config = Config::from_yaml(&CONFIG[..CONFIG.find("allow:").expect("allow list")])?;
    let mut dp_no_acl = Dataplane::load(LoadOptions {
        max_sources: 1024,
        test_clock: false,
        pin_dir: None,
    })?;
    dp_no_acl.apply(&no_acl_config, &[])?;
    let throttle_no_acl = dp_no_acl.program()?;
    let mut dp_fixed_clock = Dataplane::load(LoadOptions {
        max_sources: 1024,
        test_clock: true,
        pin_dir: None,
    })?;
    dp_fixed_clock.set_clock(1_000_000_000)?;
    dp_fixed_clock.apply(&config, &[])?;
    let throttle_fixed_clock = dp_fixed_clock.program()?;

    // Warm up: track the source of the hit paths, and exhaust the over-quota rule.
    for program in [throttle, throttle_no_acl, throttle_fixed_clock] {
        ns_per_run(program, &hit_admit, 1000)?;
        ns_per_run(program, &hit_over, 1000)?;
    }

    let mut samples: [Vec<f64>; 9] = Default::default();
    let mut next_source = 0u32;
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        samples[0].push(ns_per_run(drop, &hit_admit, REPEAT)?);
        samples[1].push(ns_per_run(pass, &hit_admit, REPEAT)?);
        samples[2].push(ns_per_run(throttle, &hit_admit, REPEAT)?);
        samples[3].push(ns_per_run(throttle, &hit_over, REPEAT)?);
        samples[4].push(ns_per_run(throttle, &no_rule, REPEAT)?);
        samples[7].push(ns_per_run(throttle_no_acl, &hit_over, REPEAT)?);
        samples[8].push(ns_per_run(throttle_fixed_clock, &hit_over, REPEAT)?);
        // New sources: each frame from an address never seen before.
        let frames: Vec<Vec<u8>> = (0..NEW_SOURCES / ROUNDS as u32)
            .map(|_| {
                next_source += 1;
                let [_, a, b, c] = next_source.to_be_bytes();
                udp([10 | 0x80, a, b, c], 9002)
            })
            .collect();
        samples[5].push(ns_per_distinct_run(drop, &frames)?);
        samples[6].push(ns_per_distinct_run(throttle, &frames)?);
    }
    let totals = dp.totals()?;
    if totals.new_sources < NEW_SOURCES as u64 - ROUNDS as u64 {
        bail!(
            "only {} new sources were tracked; the new-source path was not measured",
            totals.new_sources
        );
    }
    let [drop_ns, pass_ns, admit_ns, over_ns, no_rule_ns, drop_single_ns, new_ns, over_no_acl_ns, over_fixed_clock_ns] =
        samples.map(median);
    Ok(vec![
        Measurement {
            name: "xdp_pass_baseline",
            what: "bare XDP_PASS program",
            value: pass_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_within_quota",
            what: "known source, within quota (atomic add, PASS)",
            value: admit_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota",
            what: "known source, over quota (DROP)",
            value: over_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota_no_acl",
            what: "known source, over quota, empty access list (no trie lookup)",
            value: over_no_acl_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota_fixed_clock",
            what: "known source, over quota, clock read replaced by a map value",
            value: over_fixed_clock_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_no_rule",
            what: "no rule for the port (PASS)",
            value: no_rule_ns,
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_new_source",
            what: "source never seen (LRU insert), one run per source",
            value: new_ns,
            baseline_name: "xdp_drop_single_run",
            baseline: drop_single_ns,
        },
    ])
}

fn write_outputs(results: &[Measurement], docs: &Path, command: &str) -> Result<()> {
    let mut json = String::from("[\n");
    for (i, m) in results.iter().enumerate() {
        let comma = if i + 1 < results.len() { "," } else { "" };
        writeln!(
            json,
            "  {{\"name\": \"{}\", \"value\": {:.2}, \"unit\": \"ns/packet\", \"baseline\": {:.2}, \"baseline_name\": \"{}\", \"ratio\": {:.3}}}{comma}",
            m.name, m.value, m.baseline, m.baseline_name, m.value / m.baseline
        )?;
    }
    json.push_str("]\n");
    std::fs::create_dir_all(docs.join("bench"))?;
    std::fs::write(docs.join("bench/latest.json"), json)?;

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mut table = format!(
        "Command: `{command}` (as root). Kernel {}, {cpu}, {} CPUs. BPF_PROG_TEST_RUN, repeat {REPEAT} \
         (new sources: {NEW_SOURCES} single runs), median of {ROUNDS} interleaved rounds.\n\n\
         | path | ns/packet | baseline | baseline ns/packet | ratio |\n|---|---:|---|---:|---:|\n",
        kernel.trim(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for m in results {
        writeln!(
            table,
            "| {} | {:.2} | {} | {:.2} | {:.2}x |",
            m.what,
            m.value,
            m.baseline_name,
            m.baseline,
            m.value / m.baseline
        )?;
    }
    print!("{table}");

    let md_path = docs.join("benchmarks.md");
    let md = std::fs::read_to_string(&md_path)
        .with_context(|| format!("reading {}", md_path.display()))?;
    let (start, end) = ("<!-- bench:xdp:start -->", "<!-- bench:xdp:end -->");
    let (Some(a), Some(b)) = (md.find(start), md.find(end)) else {
        bail!("{} has no {start} ... {end} section", md_path.display());
    };
    let updated = format!("{}{start}\n{table}{}", &md[..a], &md[b..]);
    std::fs::write(&md_path, updated)?;
    eprintln!(
        "wrote {} and {}",
        docs.join("bench/latest.json").display(),
        md_path.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (suite, docs) = match args.as_slice() {
        [suite] => (
            suite.as_str(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"),
        ),
        [suite, docs] => (suite.as_str(), PathBuf::from(docs)),
        _ => bail!("usage: throttle-bench xdp [DOCS_DIR]"),
    };
    if suite != "xdp" {
        bail!("unknown suite `{suite}`; available: xdp");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("throttle-bench needs root (BPF_PROG_TEST_RUN)");
    }
    let results = run_xdp()?;
    write_outputs(&results, &docs, "cargo xtask bench xdp")
}
