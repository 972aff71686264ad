//! Reload latency seen in traffic: a steady UDP stream is held back by a rule with a limit of 1,
//! the config is rewritten with a high limit, and the time from starting `throttle-ctl reload`
//! to the first datagram the receiver gets is the time until the new limit is enforced.
//! Used by `throttle-bench reload` and by the end-to-end tier (which checks it works, never
//! how fast).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::Daemon,
    netns::{Lab, RECEIVER_V4},
    traffic::force_rcvbuf,
};

/// The rule whose limit the reload changes.
pub const PROBE_PORT: u16 = 9000;
/// Gap between the stream's datagrams: the resolution of the measurement. Long enough that
/// the sender sleeps between sends and leaves the CPUs to the daemon and the CLI.
pub const STREAM_GAP: Duration = Duration::from_micros(200);
/// The probe's limit while the stream is to be held back (its window is an hour, so the one
/// datagram admitted at the start is all that passes).
const HELD: u64 = 1;
/// The probe's limit after the reload: everything passes.
const OPEN: u64 = 1 << 40;

/// A config of `rules` rules: `rules - 1` fillers on UDP ports from 10001, then the probe on
/// [`PROBE_PORT`] with `probe_limit` per hour (or, with None, a plain filler there too).
/// `max_rules` has room for all of them.
pub fn rules_yaml(rules: usize, probe_limit: Option<u64>) -> String {
    let mut text = format!("max_rules: {}\nrules:\n", (rules + 1).max(1024));
    for i in 1..rules {
        text += &format!(
            "  - {{name: filler-{i}, protocol: udp, port: {}, limit: 100, window: 1s}}\n",
            10_000 + i
        );
    }
    match probe_limit {
        Some(limit) => {
            text += &format!(
                "  - {{name: probe, protocol: udp, port: {PROBE_PORT}, limit: {limit}, window: 1h}}\n"
            )
        }
        None => text += &format!(
            "  - {{name: filler-{rules}, protocol: udp, port: {PROBE_PORT}, limit: 100, window: 1s}}\n"
        ),
    }
    text
}

/// One reload, timed.
#[derive(Clone, Copy, Debug)]
pub struct Reload {
    /// From starting `throttle-ctl reload` to the first datagram through under the new limit.
    pub enforced: Duration,
    /// From starting `throttle-ctl reload` to its exit (the daemon answered).
    pub command: Duration,
}

/// Arrival times of the stream at the receiver.
struct Arrivals {
    times: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Arrivals {
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.times.lock().unwrap().iter().copied().find(|a| *a > t)
    }
    fn last(&self) -> Option<Instant> {
        self.times.lock().unwrap().last().copied()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A sender thread (one datagram every [`STREAM_GAP`]) and a receiver thread noting arrivals.
fn stream(lab: &Lab) -> Result<Arrivals> {
    let times = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (arrivals, stopped) = (times.clone(), stop.clone());
    let receiver = Lab::in_ns(&lab.receiver, move || {
        let sock = UdpSocket::bind(("0.0.0.0", PROBE_PORT)).expect("bind receiver");
        force_rcvbuf(&sock, 64 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stopped.load(Ordering::Relaxed) {
            if sock.recv_from(&mut buf).is_ok() {
                arrivals.lock().unwrap().push(Instant::now());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("receiver did not start")?;
    let stopped = stop.clone();
    let sender = Lab::in_ns(&lab.sender, move || {
        let sock = UdpSocket::bind("198.18.0.2:0").expect("bind sender");
        let dst = SocketAddr::new(RECEIVER_V4.parse().unwrap(), PROBE_PORT);
        let mut next = Instant::now();
        while !stopped.load(Ordering::Relaxed) {
            let _ = sock.send_to(&[0x5a; 64], dst);
            next = (next + STREAM_GAP).max(Instant::now());
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    Ok(Arrivals {
        times,
        stop,
        threads: vec![receiver, sender],
    })
}

/// Waits until nothing has arrived for `quiet` (the stream is held back), up to `timeout`.
fn wait_held(arrivals: &Arrivals, quiet: Duration, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let since = Instant::now();
    loop {
        let last = arrivals.last().unwrap_or(since).max(since);
        if last.elapsed() >= quiet {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the stream still gets through {timeout:?} after the limit was lowered");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reload(daemon: &Daemon) -> Result<()> {
    let out = daemon.ctl(&["reload"]);
    if !out.status.success() {
        bail!(
            "throttle-ctl reload: {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a daemon with `rules` rules in a fresh lab and times `rounds` reloads, each from the
/// probe held back (limit 1) to the probe open, seen in the stream.
pub fn measure(rules: usize, rounds: usize) -> Result<Vec<Reload>> {
    let mut lab = Lab::new("rl", 1, &[])?;
    let daemon = Daemon::start(
        &mut lab,
        &format!("reload-{rules}"),
        &rules_yaml(rules, Some(HELD)),
        &["--no-pin"],
    )?;
    let status: throttle_ctl::control::Status = daemon.json(&["status"])?;
    let loaded = status
        .maps
        .iter()
        .find(|m| m.name == "rules")
        .map(|m| m.entries);
    if loaded != Some(rules as u64) {
        bail!("the daemon reports {loaded:?} rules, the config has {rules}");
    }
    let arrivals = stream(&lab)?;
    let mut out = Vec::new();
    for _ in 0..rounds {
        std::fs::write(&daemon.config, rules_yaml(rules, Some(HELD)))?;
        reload(&daemon)?;
        wait_held(
            &arrivals,
            Duration::from_millis(200),
            Duration::from_secs(10),
        )?;
        std::fs::write(&daemon.config, rules_yaml(rules, Some(OPEN)))?;
        let start = Instant::now();
        reload(&daemon)?;
        let command = start.elapsed();
        let deadline = start + Duration::from_secs(10);
        let first = loop {
            if let Some(first) = arrivals.first_after(start) {
                break first;
            }
            if Instant::now() > deadline {
                bail!("no datagram got through within 10 s of the reload to limit {OPEN}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        out.push(Reload {
            enforced: first - start,
            command,
        });
    }
    drop(arrivals);
    drop(daemon);
    drop(lab);
    Ok(out)
}
