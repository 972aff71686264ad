//! `throttle-demo`: builds a two-namespace lab, runs `throttle-ctl run` on the receiver,
//! floods it from the sender, and prints what got through and the XDP counters.
//! Run through `cargo xtask demo` (needs root). Everything it creates is removed on exit.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use throttle_tests::{
    daemon::Daemon,
    netns::Lab,
    traffic::{receiver, sender, Pace},
};

const PORT: u16 = 9000;
const FLOOD: &str = "198.18.0.3";
const CLIENT: &str = "198.18.0.4";
const BLOCKED: &str = "198.18.0.66";
const SECONDS: u32 = 5;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root (network namespaces and XDP)");
    }
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;

    println!("[1/4] lab: namespaces with a veth pair; receiver 198.18.0.1, sender {FLOOD} {CLIENT} {BLOCKED}");
    let mut lab = Lab::new("demo", 1, &[FLOOD, CLIENT, BLOCKED])?;
    println!(
        "      sender {} ({}) <-> receiver {} ({})",
        lab.sender, lab.sender_if, lab.receiver, lab.receiver_if
    );

    println!(
        "[2/4] throttle-ctl run --config configs/demo.yaml in {}",
        lab.receiver
    );
    for line in config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        println!("      | {line}");
    }
    // Not pinned: the demo leaves nothing enforcing behind.
    let daemon = Daemon::start(&mut lab, "demo", &config, &["--no-pin"])?;
    let log_path = daemon.log.clone();
    println!("      enforcing (log: {})", log_path.display());

    println!("[3/4] traffic to UDP {PORT} for {SECONDS}s:");
    println!("      {FLOOD} floods at 20000 datagrams/s, {CLIENT} is a client at 200/s, {BLOCKED} is denylisted");
    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    let start = Arc::new(Barrier::new(3));
    let second = Duration::from_secs(1);
    let flood = sender(
        &lab,
        FLOOD,
        PORT,
        0,
        Pace::Flood {
            every: Duration::from_micros(50),
        },
        second * SECONDS,
        start.clone(),
    );
    let client = sender(
        &lab,
        CLIENT,
        PORT,
        0,
        Pace::Steady {
            every: Duration::from_millis(5),
        },
        second * SECONDS,
        start.clone(),
    );
    let blocked = sender(
        &lab,
        BLOCKED,
        PORT,
        0,
        Pace::Steady {
            every: Duration::from_millis(1),
        },
        second * SECONDS,
        start,
    );
    for t in 1..=SECONDS {
        std::thread::sleep(second);
        println!(
            "      t={t}s  received: flood {:>5}  client {:>4}  blocked {}",
            received.from(FLOOD),
            received.from(CLIENT),
            received.from(BLOCKED)
        );
    }
    let sent = [
        flood.join().unwrap(),
        client.join().unwrap(),
        blocked.join().unwrap(),
    ];
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();

    println!("[4/4] results");
    println!(
        "      {:<14} {:>8} {:>9} {:>9}",
        "source", "sent", "received", "dropped"
    );
    for (addr, sent) in [FLOOD, CLIENT, BLOCKED].iter().zip(sent) {
        let got = received.from(addr);
        println!(
            "      {addr:<14} {sent:>8} {got:>9} {:>9}",
            sent.saturating_sub(got)
        );
    }
    println!("      (the flood gets 500/s x {SECONDS}s = {}; the client everything; the blocked source nothing)", 500 * SECONDS);

    println!("      XDP counters, from `throttle-ctl stats`:");
    let out = daemon.ctl(&["stats"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      | {line}");
    }
    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(daemon.pid as i32, libc::SIGTERM) };
    let code = lab.wait(daemon.pid)?;
    if code != Some(0) || !out.status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "throttle-ctl exited with {code:?} (stats: {:?}); log:\n{log}",
            out.status
        );
    }
    println!("done: lab removed, XDP detached.");
    Ok(())
}
