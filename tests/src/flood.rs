//! The flood benchmark: trafgen floods a receiver namespace over veth, and the CPU time spent
//! per packet (by the receiver, and by the whole machine) is compared between no filter,
//! throttle's XDP program, an nftables per-source meter and iptables hashlimit: same flood,
//! same packet count.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{daemon::Daemon, netns::Lab};

/// What filters the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    None,
    /// A bare XDP_PASS program: what native XDP on veth costs before any decision (veth
    /// turns each frame into an xdp_buff, copying it when it lacks XDP's headroom, and builds
    /// an skb again for what passes), so throttle's own share can be told apart.
    BareXdp,
    Throttle,
    Nftables,
    Iptables,
}

impl Filter {
    pub const ALL: [Filter; 5] = [
        Filter::None,
        Filter::BareXdp,
        Filter::Throttle,
        Filter::Nftables,
        Filter::Iptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::BareXdp => "bare XDP_PASS program",
            Filter::Throttle => "throttle (XDP)",
            Filter::Nftables => "nftables meter",
            Filter::Iptables => "iptables hashlimit",
        }
    }
}

/// Per-source limit of every filter: 100 packets a second to UDP 9000.
pub const LIMIT_PER_SECOND: u32 = 100;
const PORT: u16 = 9000;

/// Sources of a flood: 1k IPv4 addresses, or 2^20 IPv6 ones (198.18.0.0/15 has too few).
#[derive(Clone, Copy, Debug)]
pub enum Sources {
    V4Thousand,
    V6Million,
}

impl Sources {
    /// Distinct addresses the flood draws from.
    pub fn count(self) -> u64 {
        match self {
            Sources::V4Thousand => 1024,
            Sources::V6Million => 1 << 20,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sources::V4Thousand => "1k sources (IPv4)",
            Sources::V6Million => "1M sources (IPv6)",
        }
    }
}

/// CPU time of the whole machine (all CPUs), in ns: all busy states, and softirq alone.
#[derive(Clone, Copy, Debug)]
struct CpuTime {
    busy: u64,
    /// Time in softirq: where the receiver's stack runs (veth NAPI with the XDP program, or
    /// the backlog with netfilter), not the sender's system time in trafgen.
    softirq: u64,
}

fn cpu_time() -> Result<CpuTime> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if fields.len() < 7 {
        bail!(
            "/proc/stat has {} cpu fields, expected at least 7",
            fields.len()
        );
    }
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(CpuTime {
        busy: busy * 1_000_000_000 / tick,
        softirq: fields[6] * 1_000_000_000 / tick,
    })
}

/// CPU per packet of one flood.
#[derive(Clone, Copy, Debug)]
pub struct FloodCost {
    /// Receiver side: softirq time per packet.
    pub receiver_ns: f64,
    /// Whole machine, sender included.
    pub machine_ns: f64,
}

fn sh(args: &[&str], input: Option<&str>) -> Result<()> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if let Some(text) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// trafgen's packet description: UDP to the receiver's MAC and PORT, from the given sources.
fn trafgen_config(receiver_mac: &str, sources: Sources) -> String {
    let mac = receiver_mac
        .split(':')
        .map(|b| format!("0x{b}"))
        .collect::<Vec<_>>()
        .join(", ");
    match sources {
        Sources::V4Thousand => format!(
            "{{ {mac}, 0x02, 0, 0, 0, 0, 0x02, c16(0x0800),
              0x45, 0, c16(46), drnd(2), 0, 0, 64, 17, csumip(14, 33),
              198, 18, dinc(128, 131), drnd(), 198, 18, 0, 1,
              c16(40000), c16({PORT}), c16(26), c16(0), fill(0x5a, 18) }}"
        ),
        Sources::V6Million => format!(
            "{{ {mac}, 0x02, 0, 0, 0, 0, 0x02, c16(0x86dd),
              0x60, 0, 0, 0, c16(26), 17, 64,
              0x20, 0x01, 0x0d, 0xb8, 0, 1, fill(0, 7), dinc(0, 15), drnd(2),
              0x20, 0x01, 0x0d, 0xb8, fill(0, 11), 1,
              c16(40000), c16({PORT}), c16(26), csumudp6(14, 54), fill(0x5a, 18) }}"
        ),
    }
}

/// Datagrams that reached UDP in the receiver and found no socket (the flood's port has
/// none): what the filter let through, IPv4 and IPv6 together.
fn udp_no_ports(lab: &Lab) -> Result<u64> {
    let read = |file: &str| lab_cat(lab, file);
    let snmp = read("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next(), udp.next());
    let v4 = names
        .zip(values)
        .and_then(|(n, v)| {
            let i = n.split_whitespace().position(|f| f == "NoPorts")?;
            v.split_whitespace().nth(i)?.parse::<u64>().ok()
        })
        .context("no Udp NoPorts in /proc/net/snmp")?;
    let v6 = read("/proc/net/snmp6")?
        .lines()
        .find_map(|l| l.strip_prefix("Udp6NoPorts"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no Udp6NoPorts in /proc/net/snmp6")?;
    Ok(v4 + v6)
}

fn lab_cat(lab: &Lab, file: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.receiver, "cat", file])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("reading {file} in {}", lab.receiver))?;
    if !out.status.success() {
        bail!("reading {file} in {}: {:?}", lab.receiver, out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What keeps a filter in place while the flood runs; dropping it (on every path) takes the
/// filter away before the lab goes.
enum Running {
    Nothing,
    Daemon(Daemon),
    /// Held for its Drop.
    Xdp {
        _attached: AttachedXdp,
    },
}

/// The thread holding an attached program: dropping this tells it to detach, and waits.
struct AttachedXdp {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AttachedXdp {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The bare programs built beside throttle's by `cargo xtask build-ebpf` (or
/// THROTTLE_BASELINE_OBJECT).
pub fn baseline_object() -> std::path::PathBuf {
    std::env::var_os("THROTTLE_BASELINE_OBJECT")
        .map(Into::into)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/baseline")
        })
}

/// Attaches the bare XDP_PASS program to the receiver's interface, in native mode like
/// throttle, from a thread inside the receiver namespace.
fn attach_bare_xdp(lab: &Lab) -> Result<Running> {
    use aya::programs::{Xdp, XdpMode};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (iface, object) = (lab.receiver_if.clone(), baseline_object());
    let thread = Lab::in_ns(&lab.receiver, move || {
        let attached = (|| -> Result<aya::Ebpf> {
            let mut ebpf = aya::Ebpf::load_file(&object)
                .with_context(|| format!("loading {}", object.display()))?;
            let program: &mut Xdp = ebpf
                .program_mut("xdp_pass")
                .context("no xdp_pass in the baseline object")?
                .try_into()?;
            program.load()?;
            program.attach(&iface, XdpMode::Driver)?;
            Ok(ebpf)
        })();
        match attached {
            Ok(ebpf) => {
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.recv();
                drop(ebpf);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    });
    ready_rx
        .recv()
        .context("the XDP thread ended before attaching")??;
    Ok(Running::Xdp {
        _attached: AttachedXdp {
            stop: stop_tx,
            thread: Some(thread),
        },
    })
}

/// Sets `filter` up in the lab's receiver (a daemon for throttle, a program or rules for
/// the others).
fn set_up(lab: &mut Lab, filter: Filter) -> Result<Running> {
    let ns = lab.receiver.clone();
    let rate = LIMIT_PER_SECOND;
    match filter {
        Filter::None => Ok(Running::Nothing),
        Filter::BareXdp => attach_bare_xdp(lab),
        Filter::Throttle => {
            let config = format!(
                "max_sources: 2097152\nrules:\n  - {{name: flood, protocol: udp, port: {PORT}, limit: {rate}, window: 1s}}\n"
            );
            Ok(Running::Daemon(Daemon::start(
                lab,
                "flood",
                &config,
                &["--no-pin"],
            )?))
        }
        Filter::Nftables => {
            let ruleset = format!(
                "table inet bench {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
                 udp dport {PORT} meter v4 size 2097152 {{ ip saddr limit rate over {rate}/second }} drop\n  \
                 udp dport {PORT} meter v6 size 2097152 {{ ip6 saddr limit rate over {rate}/second }} drop\n }}\n}}\n"
            );
            sh(
                &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
                Some(&ruleset),
            )?;
            Ok(Running::Nothing)
        }
        Filter::Iptables => {
            for tool in ["iptables", "ip6tables"] {
                sh(
                    &[
                        "ip",
                        "netns",
                        "exec",
                        &ns,
                        tool,
                        "-A",
                        "INPUT",
                        "-p",
                        "udp",
                        "--dport",
                        &PORT.to_string(),
                        "-m",
                        "hashlimit",
                        "--hashlimit-above",
                        &format!("{rate}/sec"),
                        "--hashlimit-mode",
                        "srcip",
                        "--hashlimit-name",
                        tool,
                        "--hashlimit-htable-size",
                        "1048576",
                        "--hashlimit-htable-max",
                        "2097152",
                        "-j",
                        "DROP",
                    ],
                    None,
                )?;
            }
            Ok(Running::Nothing)
        }
    }
}

/// Floods a fresh lab filtered by `filter` with `packets` frames from `sources`; returns the
/// CPU per packet of the receiver (softirq) and of the whole machine (sender included).
pub fn cpu_ns_per_packet(
    filter: Filter,
    sources: Sources,
    packets: u64,
    work: &Path,
) -> Result<FloodCost> {
    let mut lab = Lab::new("fl", 1, &[])?;
    let running = set_up(&mut lab, filter)?;
    let out = lab.ip(&lab.receiver, &["-br", "link", "show", &lab.receiver_if])?;
    let mac = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .context("no MAC")?
        .to_string();
    std::fs::create_dir_all(work)?;
    let config = work.join("trafgen.cfg");
    std::fs::write(&config, trafgen_config(&mac, sources))?;
    let trafgen = [
        "ip",
        "netns",
        "exec",
        &lab.sender,
        "trafgen",
        "--dev",
        &lab.sender_if,
        "--conf",
        config.to_str().unwrap(),
        "--num",
        &packets.to_string(),
        "--cpus",
        "1",
    ];
    // trafgen now and then gives up on a full TX ring ("Flushing TX_RING failed"): run again.
    let mut attempt = 0;
    let started = std::time::Instant::now();
    let (before, after) = loop {
        let before = cpu_time()?;
        match sh(&trafgen, None) {
            Ok(()) => break (before, cpu_time()?),
            Err(e) if attempt < 2 => {
                eprintln!("flood: trafgen failed ({e}), again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    if let Running::Daemon(d) = &running {
        // The program really saw the flood (from 1M sources each sends about 4 frames, all
        // within quota: what is measured there is tracking a million sources).
        let stats: throttle_ctl::control::Stats = d.json(&["stats"])?;
        let seen = stats.global.passed + stats.global.dropped;
        if seen < packets * 9 / 10 {
            bail!("throttle saw only {seen} of {packets} frames");
        }
    }
    // Every filter really filtered, or really let through: a meter that silently matched
    // nothing would make its row look cheap.
    let delivered = udp_no_ports(&lab)?;
    let limiting = !matches!(filter, Filter::None | Filter::BareXdp);
    // The most a per-source limit lets through in the flood's time: the rate, plus two
    // seconds' worth for bursts (the sliding window's worst case is one extra window).
    let seconds = started.elapsed().as_secs_f64();
    let allowed = sources.count() as f64 * f64::from(LIMIT_PER_SECOND) * (seconds + 2.0);
    match () {
        _ if limiting && delivered as f64 > allowed => bail!(
            "{} let {delivered} of {packets} frames through in {seconds:.1} s, more than \
             {LIMIT_PER_SECOND}/s per source allows",
            filter.label()
        ),
        _ if !limiting && delivered < packets / 2 => bail!(
            "only {delivered} of {packets} frames reached UDP under {}",
            filter.label()
        ),
        _ => {}
    }
    drop(running);
    drop(lab);
    Ok(FloodCost {
        receiver_ns: (after.softirq - before.softirq) as f64 / packets as f64,
        machine_ns: (after.busy - before.busy) as f64 / packets as f64,
    })
}
