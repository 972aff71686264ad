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
/// Rule-set sizes of the apply and reload figures.
const RULE_COUNTS: [usize; 4] = [10, 100, 1000, 10_000];
/// Reloads timed per rule-set size.
const RELOAD_ROUNDS: usize = 7;
/// Frames per flood, and floods per filter and source set (the softirq figure is sampled
/// at the tick: more frames, less noise).
const FLOOD_PACKETS: u64 = 4_000_000;
const FLOOD_RUNS: usize = 5;

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
    unit: &'static str,
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
    let baseline_path = throttle_tests::flood::baseline_object();
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
        max_rules: throttle_common::DEFAULT_MAX_RULES,
        test_clock: false,
        pin_dir: None,
    })?;
    dp.apply(&config, &[])?;
    let throttle = dp.program()?;

    let hit_admit = udp([198, 18, 0, 2], 9000);
    let hit_over = udp([198, 18, 0, 2], 9001);
    let no_rule = udp([198, 18, 0, 2], 80);
    let allowlisted = udp([198, 19, 100, 1], 9000);
    let denylisted = udp([198, 19, 66, 1], 9000);
    // Two variants of the over-quota hit, to show where its time goes: without the access
    // list (no trie lookup), and with the clock read replaced by a map value (the test clock).
    let no_acl_config = Config::from_yaml(&CONFIG[..CONFIG.find("allow:").expect("allow list")])?;
    let mut dp_no_acl = Dataplane::load(LoadOptions {
        max_sources: 1024,
        max_rules: throttle_common::DEFAULT_MAX_RULES,
        test_clock: false,
        pin_dir: None,
    })?;
    dp_no_acl.apply(&no_acl_config, &[])?;
    let throttle_no_acl = dp_no_acl.program()?;
    let mut dp_fixed_clock = Dataplane::load(LoadOptions {
        max_sources: 1024,
        max_rules: throttle_common::DEFAULT_MAX_RULES,
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

    let mut samples: [Vec<f64>; 11] = Default::default();
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
        samples[9].push(ns_per_run(throttle, &allowlisted, REPEAT)?);
        samples[10].push(ns_per_run(throttle, &denylisted, REPEAT)?);
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
    let [drop_ns, pass_ns, admit_ns, over_ns, no_rule_ns, drop_single_ns, new_ns, over_no_acl_ns, over_fixed_clock_ns, allow_ns, deny_ns] =
        samples.map(median);
    let memory = memory_per_source(&dp)?;
    let walk = source_table_walk(&dp)?;
    let applies = apply_latency()?;
    let mut results = vec![
        Measurement {
            name: "xdp_allowlisted",
            what: "allowlisted source (PASS)",
            value: allow_ns,
            unit: "ns/packet",
            baseline_name: "xdp_pass",
            baseline: pass_ns,
        },
        Measurement {
            name: "xdp_denylisted",
            what: "denylisted source (DROP)",
            value: deny_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        memory,
        walk,
    ];
    results.extend(applies);
    let mut paths = vec![
        Measurement {
            name: "xdp_pass_baseline",
            what: "bare XDP_PASS program",
            value: pass_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_within_quota",
            what: "known source, within quota (atomic add, PASS)",
            value: admit_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota",
            what: "known source, over quota (DROP)",
            value: over_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota_no_acl",
            what: "known source, over quota, empty access list (no trie lookup)",
            value: over_no_acl_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_hit_over_quota_fixed_clock",
            what: "known source, over quota, clock read replaced by a map value",
            value: over_fixed_clock_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_no_rule",
            what: "no rule for the port (PASS)",
            value: no_rule_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop",
            baseline: drop_ns,
        },
        Measurement {
            name: "xdp_new_source",
            what: "source never seen (LRU insert), one run per source",
            value: new_ns,
            unit: "ns/packet",
            baseline_name: "xdp_drop_single_run",
            baseline: drop_single_ns,
        },
    ];
    paths.extend(results);
    Ok(paths)
}

/// Kernel memory of the source table per entry (its `memlock` in fdinfo over its size),
/// against the bytes of one key and value.
fn memory_per_source(dp: &Dataplane) -> Result<Measurement> {
    use std::os::fd::AsRawFd;
    let info = dp.map_info(throttle_common::names::SOURCES)?;
    let fd = info.fd()?;
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsFd::as_fd(&fd).as_raw_fd()
    ))?;
    let memlock: f64 = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .context("no memlock in fdinfo")?
        .trim()
        .parse()?;
    let payload = (std::mem::size_of::<throttle_common::SourceKey>()
        + std::mem::size_of::<throttle_common::WindowState>()) as f64;
    Ok(Measurement {
        name: "memory_per_tracked_source",
        what: "kernel memory per tracked source (LRU hash, preallocated)",
        value: memlock / info.max_entries() as f64,
        unit: "bytes",
        baseline_name: "key + value bytes",
        baseline: payload,
    })
}

/// Reading the whole source table (what `throttle-ctl top` and `status` do) in batches,
/// against reading it one element at a time, per entry.
fn source_table_walk(dp: &Dataplane) -> Result<Measurement> {
    use throttle_common::{names, SourceKey, WindowState};
    let info = dp.map_info(names::SOURCES)?;
    let map = aya::maps::Map::LruHashMap(aya::maps::MapData::from_id(info.id())?);
    let table: aya::maps::HashMap<_, SourceKey, WindowState> = aya::maps::HashMap::try_from(map)?;
    let (mut batched, mut one_by_one) = (Vec::new(), Vec::new());
    let mut entries = 0;
    for _ in 0..ROUNDS {
        let start = std::time::Instant::now();
        entries = dp.sources(usize::MAX)?.len();
        batched.push(start.elapsed().as_nanos() as f64 / entries as f64);
        let start = std::time::Instant::now();
        let n = table.iter().filter(|kv| kv.is_ok()).count();
        one_by_one.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    if entries < NEW_SOURCES as usize / 2 {
        bail!("only {entries} sources to walk");
    }
    Ok(Measurement {
        name: "source_table_read_per_entry",
        what: leak(format!(
            "reading the source table ({entries} entries), batched"
        )),
        value: median(batched),
        unit: "ns/entry",
        baseline_name: "one element at a time",
        baseline: median(one_by_one),
    })
}

/// Time to apply a rule set of 10, 100, 1000 and 10000 rules (everything up to the slot
/// switch, after which packets see the new set), against the 10-rule apply.
fn apply_latency() -> Result<Vec<Measurement>> {
    let mut dp = Dataplane::load(LoadOptions {
        max_sources: 1024,
        max_rules: throttle_common::MAX_RULES,
        test_clock: false,
        pin_dir: None,
    })?;
    let mut timings = Vec::new();
    for n in RULE_COUNTS {
        let config = Config::from_yaml(&throttle_tests::reload::rules_yaml(n, None))?;
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            let start = std::time::Instant::now();
            dp.apply(&config, &[])?;
            runs.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        timings.push(median(runs));
    }
    Ok(RULE_COUNTS
        .iter()
        .zip(&timings)
        .map(|(n, ms)| Measurement {
            name: leak(format!("apply_{n}_rules")),
            what: leak(format!("rule-set apply, {n} rules")),
            value: *ms,
            unit: "ms",
            baseline_name: "apply_10_rules",
            baseline: timings[0],
        })
        .collect())
}

/// Writes `results` of `suite` into docs/bench/latest.json (replacing that suite's earlier
/// entries, keeping the other suites') and into its section of docs/benchmarks.md.
fn write_outputs(results: &[Measurement], docs: &Path, suite: &str, method: &str) -> Result<()> {
    let json_path = docs.join("bench/latest.json");
    let mut all: Vec<serde_json::Value> = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    all.retain(|v| v["suite"].as_str().is_some_and(|s| s != suite));
    for m in results {
        all.push(serde_json::json!({
            "suite": suite,
            "name": m.name,
            "what": m.what,
            "value": (m.value * 100.0).round() / 100.0,
            "unit": m.unit,
            "baseline": (m.baseline * 100.0).round() / 100.0,
            "baseline_name": m.baseline_name,
            "ratio": (m.value / m.baseline * 1000.0).round() / 1000.0,
        }));
    }
    std::fs::create_dir_all(docs.join("bench"))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)? + "\n")?;
    let chart_path = docs.join("bench/chart.png");
    throttle_tests::chart::draw(&all, &chart_path)?;

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
        "Command: `cargo xtask bench {suite}` (as root). Kernel {}, {cpu}, {} CPUs. {method}\n\n\
         | what | value | baseline | baseline value | ratio |\n|---|---:|---|---:|---:|\n",
        kernel.trim(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for m in results {
        writeln!(
            table,
            "| {} | {:.2} {} | {} | {:.2} {} | {:.2}x |",
            m.what,
            m.value,
            m.unit,
            m.baseline_name,
            m.baseline,
            m.unit,
            m.value / m.baseline
        )?;
    }
    print!("{table}");

    let md_path = docs.join("benchmarks.md");
    let md = std::fs::read_to_string(&md_path)
        .with_context(|| format!("reading {}", md_path.display()))?;
    let (start, end) = (
        format!("<!-- bench:{suite}:start -->"),
        format!("<!-- bench:{suite}:end -->"),
    );
    let (Some(a), Some(b)) = (md.find(&start), md.find(&end)) else {
        bail!("{} has no {start} ... {end} section", md_path.display());
    };
    let updated = format!("{}{start}\n{table}{}", &md[..a], &md[b..]);
    std::fs::write(&md_path, updated)?;
    eprintln!(
        "wrote {}, {} and {}",
        json_path.display(),
        chart_path.display(),
        md_path.display()
    );
    Ok(())
}

/// The flood suite: CPU per packet under each filter, against no filter, for both source sets:
/// the receiver's (softirq) time, then the whole machine's.
fn run_flood() -> Result<Vec<Measurement>> {
    use throttle_tests::flood::{cpu_ns_per_packet, Filter, Sources};
    let work = std::env::temp_dir().join(format!("throttle-flood-{}", std::process::id()));
    let mut receiver = Vec::new();
    let mut machine = Vec::new();
    for sources in [Sources::V4Thousand, Sources::V6Million] {
        let mut per_filter = Vec::new();
        for filter in Filter::ALL {
            let mut runs = Vec::new();
            for run in 0..FLOOD_RUNS {
                eprintln!(
                    "flood: {}, {}, run {}/{FLOOD_RUNS}",
                    sources.label(),
                    filter.label(),
                    run + 1
                );
                runs.push(cpu_ns_per_packet(filter, sources, FLOOD_PACKETS, &work)?);
            }
            let receiver_ns = median(runs.iter().map(|r| r.receiver_ns).collect());
            let machine_ns = median(runs.iter().map(|r| r.machine_ns).collect());
            per_filter.push((filter, receiver_ns, machine_ns));
        }
        let (receiver_base, machine_base) = (per_filter[0].1, per_filter[0].2);
        for (filter, receiver_ns, machine_ns) in per_filter {
            let name = format!("flood_{:?}_{:?}", sources, filter).to_lowercase();
            receiver.push(Measurement {
                name: leak(format!("{name}_receiver")),
                what: leak(format!("{}, {}: receiver", sources.label(), filter.label())),
                value: receiver_ns,
                unit: "ns/packet",
                baseline_name: "no filter",
                baseline: receiver_base,
            });
            machine.push(Measurement {
                name: leak(format!("{name}_machine")),
                what: leak(format!(
                    "{}, {}: whole machine",
                    sources.label(),
                    filter.label()
                )),
                value: machine_ns,
                unit: "ns/packet",
                baseline_name: "no filter",
                baseline: machine_base,
            });
        }
    }
    receiver.extend(machine);
    Ok(receiver)
}

/// The reload suite: from `throttle-ctl reload` to the new limit seen in traffic, and to the
/// command's exit, for each rule count, against the 10-rule figures.
fn run_reload() -> Result<Vec<Measurement>> {
    use throttle_tests::reload::measure;
    let mut enforced = Vec::new();
    let mut command = Vec::new();
    for n in RULE_COUNTS {
        eprintln!("reload: {n} rules, {RELOAD_ROUNDS} reloads");
        let runs = measure(n, RELOAD_ROUNDS)?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        enforced.push((n, median(runs.iter().map(|r| ms(r.enforced)).collect())));
        command.push((n, median(runs.iter().map(|r| ms(r.command)).collect())));
    }
    let rows = |figures: &[(usize, f64)], key: &str, what: &str| -> Vec<Measurement> {
        figures
            .iter()
            .map(|(n, value)| Measurement {
                name: leak(format!("reload_{n}_rules_{key}")),
                what: leak(format!("{n} rules: {what}")),
                value: *value,
                unit: "ms",
                baseline_name: leak(format!("10 rules, {key}")),
                baseline: figures[0].1,
            })
            .collect()
    };
    let mut results = rows(&enforced, "enforced", "reload to new limit seen in traffic");
    results.extend(rows(&command, "command", "reload command returned"));
    Ok(results)
}

/// Names built at run time live as long as the run.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (suite, docs) = match args.as_slice() {
        [suite] => (
            suite.as_str(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"),
        ),
        [suite, docs] => (suite.as_str(), PathBuf::from(docs)),
        _ => bail!("usage: throttle-bench xdp|flood|reload|chart [DOCS_DIR]"),
    };
    if suite == "chart" {
        // Redraws the chart from the figures already in latest.json.
        let json_path = docs.join("bench/latest.json");
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        let out = docs.join("bench/chart.png");
        throttle_tests::chart::draw(&rows, &out)?;
        eprintln!("wrote {}", out.display());
        return Ok(());
    }
    // Before minutes of measuring: the chart's font, and the doc's section to fill in.
    throttle_tests::chart::register_font()?;
    let md = std::fs::read_to_string(docs.join("benchmarks.md")).unwrap_or_default();
    if !md.contains(&format!("<!-- bench:{suite}:start -->")) {
        bail!(
            "{} has no bench:{suite} section",
            docs.join("benchmarks.md").display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("throttle-bench needs root (BPF, network namespaces)");
    }
    match suite {
        "xdp" => {
            let method = format!(
                "BPF_PROG_TEST_RUN, repeat {REPEAT} (new sources: {NEW_SOURCES} single runs), median of {ROUNDS} interleaved rounds."
            );
            write_outputs(&run_xdp()?, &docs, "xdp", &method)
        }
        "flood" => {
            let method = format!(
                "trafgen sends {FLOOD_PACKETS} UDP frames over veth into the receiver namespace, \
                 limit 100 packets/s per source under every filter; median of {FLOOD_RUNS} runs. \
                 receiver: softirq CPU time per frame (/proc/stat, where the receiver's XDP program or \
                 netfilter and stack run); whole machine: all busy CPU time per frame, trafgen's included."
            );
            write_outputs(&run_flood()?, &docs, "flood", &method)
        }
        "reload" => {
            let method = format!(
                "A daemon (release build) in a namespace lab with N rules; a UDP stream, one datagram \
                 every {} µs, is held back by a rule of limit 1; the config is rewritten with a high limit \
                 and the time from starting `throttle-ctl reload` to the first datagram at the receiver \
                 is taken (resolution: the stream's gap); median of {RELOAD_ROUNDS} reloads.",
                throttle_tests::reload::STREAM_GAP.as_micros()
            );
            write_outputs(&run_reload()?, &docs, "reload", &method)
        }
        other => bail!("unknown suite `{other}`; available: xdp, flood, reload"),
    }
}
