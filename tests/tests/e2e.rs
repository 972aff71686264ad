//! Tier 3: the real `throttle-ctl run` attached in a receiver namespace, real UDP traffic from a
//! sender namespace over veth. Prints one ACCURACY line per case. Needs root.
//!
//! A flood's expected count is what the shared sliding window admits for the flood's own send
//! times (recorded on CLOCK_MONOTONIC, the program's clock, and replayed through
//! `throttle_common::admit`): a sender descheduled for a moment on a busy CI machine sends
//! less, and that is not the limiter's error. The replay must be close to the nominal
//! `limit` per window, or the flood was not a flood and the case fails.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::Duration,
};

use throttle_common::{admit, Window, WindowState};
use throttle_tests::{
    daemon::Daemon,
    have_root,
    netns::Lab,
    traffic::{receiver, sender, timed_sender, Pace},
};

const PORT: u16 = 9000;
const LIMIT: u64 = 1000;
const WINDOW: Duration = Duration::from_millis(100);
const WINDOWS: u32 = 20;

const FLOOD_V4: &str = "198.18.0.3";
const FLOOD_V6: &str = "2001:db8::3";
const COMPLIANT_V4: &str = "198.18.0.4";
const COMPLIANT_V6: &str = "2001:db8::4";
const DENIED_V4: &str = "198.18.0.66";

fn report(case: &str, allowed: u64, expected: u64, false_positives: u64) -> f64 {
    let accuracy = if expected == 0 {
        if allowed == 0 {
            100.0
        } else {
            0.0
        }
    } else {
        100.0 * (1.0 - allowed.abs_diff(expected) as f64 / expected as f64)
    };
    println!(
        "ACCURACY layer=xdp case={case} allowed={allowed} expected={expected} accuracy={accuracy:.3} false_positives={false_positives}"
    );
    accuracy
}

/// What the shared sliding window admits for sends at `times` (ns, CLOCK_MONOTONIC) from one
/// source under the test's rule, the source first seen at its first send.
fn replay(mut times: Vec<u64>) -> u64 {
    times.sort_unstable();
    let window = Window::new(WINDOW.as_nanos() as u64);
    let mut state = WindowState::new(times[0]);
    times
        .iter()
        // SAFETY: a plain, exclusively borrowed WindowState.
        .filter(|t| unsafe { admit(&mut state, **t, window, LIMIT, 1) })
        .count() as u64
}

#[test]
fn flood_is_cut_to_the_limit_across_cpus_and_compliant_sources_pass() {
    if !have_root("flood_is_cut_to_the_limit_across_cpus_and_compliant_sources_pass") {
        return;
    }
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(2);
    let mut lab = Lab::new(
        "acc",
        cpus as u32,
        &[FLOOD_V4, FLOOD_V6, COMPLIANT_V4, COMPLIANT_V6, DENIED_V4],
    )
    .unwrap();
    let config = format!(
        "rules:\n  - {{name: api-udp, protocol: udp, port: {PORT}, limit: {LIMIT}, window: {}ms}}\ndeny:\n  - cidr: {DENIED_V4}\n",
        WINDOW.as_millis()
    );
    let daemon = Daemon::start(&mut lab, "acc", &config, &["--no-pin"]).unwrap();
    let log_path = daemon.log.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    let run_all =
        |plan: &[(&'static str, usize, Pace, Duration)]| -> Vec<std::thread::JoinHandle<u64>> {
            let start = Arc::new(Barrier::new(plan.len()));
            plan.iter()
                .map(|&(src, cpu, pace, d)| sender(&lab, src, PORT, cpu, pace, d, start.clone()))
                .collect()
        };
    let sum = |handles: Vec<std::thread::JoinHandle<u64>>| {
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    };

    // A denylisted source first, alone.
    let denied_sent = sum(run_all(&[(
        DENIED_V4,
        0,
        Pace::Burst { count: 5000 },
        Duration::ZERO,
    )]));

    // Compliant sources at 30% of the limit, steadily, for as long as both floods last.
    let phase = WINDOW * WINDOWS;
    let steady = Pace::Steady {
        every: WINDOW / (LIMIT as u32 * 3 / 10),
    };
    let compliant = run_all(&[
        (COMPLIANT_V4, 0, steady, 2 * phase + WINDOW),
        (COMPLIANT_V6, 1 % cpus, steady, 2 * phase + WINDOW),
    ]);
    // Then each flood in turn, from every CPU at once, 10x the limit in total: one busy thread
    // per CPU keeps the flood free of scheduling gaps.
    let every = WINDOW * cpus as u32 / (LIMIT as u32 * 10);
    let mut flood_sent = HashMap::new();
    for src in [FLOOD_V4, FLOOD_V6] {
        let start = Arc::new(Barrier::new(cpus));
        let senders: Vec<_> = (0..cpus)
            .map(|cpu| {
                let pace = Pace::Flood { every };
                timed_sender(&lab, src, PORT, cpu, pace, phase, start.clone())
            })
            .collect();
        let times: Vec<u64> = senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        flood_sent.insert(src, times);
    }
    let compliant_sent: Vec<u64> = compliant.into_iter().map(|h| h.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();
    let got = |a: &str| received.from(a);

    let mut failures = Vec::new();
    for (case, src) in [
        ("flood-v4-all-cpus", FLOOD_V4),
        ("flood-v6-all-cpus", FLOOD_V6),
    ] {
        let sent = flood_sent[src].len() as u64;
        // The limit for each window the flood lasted (to the nearest: its threads start and
        // stop a few microseconds apart).
        let (first, last) = (
            *flood_sent[src].iter().min().unwrap(),
            *flood_sent[src].iter().max().unwrap(),
        );
        let w = WINDOW.as_nanos() as u64;
        let nominal = LIMIT * ((last - first + w / 2) / w).max(1);
        assert!(sent > 5 * nominal, "{case}: only {sent} sent, not a flood");
        let expected = replay(flood_sent[src].clone());
        println!("FLOOD case={case} sent={sent} replayed_admitted={expected} nominal={nominal}");
        // The limit per window, within 0.5% (the flood fills every window).
        assert!(
            expected.abs_diff(nominal) * 200 <= nominal,
            "{case}: the replayed flood admits {expected} where the limit gives {nominal}: \
             the senders left gaps, the flood did not test the limit"
        );
        if report(case, got(src), expected, 0) < 99.9 {
            failures.push(case);
        }
    }
    for (case, src, sent) in [
        ("compliant-v4", COMPLIANT_V4, compliant_sent[0]),
        ("compliant-v6", COMPLIANT_V6, compliant_sent[1]),
    ] {
        let fp = sent - got(src);
        report(case, got(src), sent, fp);
        if fp != 0 {
            failures.push(case);
        }
    }
    assert_eq!(denied_sent, 5000);
    report("denylisted-v4", got(DENIED_V4), 0, 0);
    if got(DENIED_V4) != 0 {
        failures.push("denylisted-v4");
    }

    // SIGTERM: the daemon exits cleanly and the interface is left without XDP.
    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(daemon.pid as i32, libc::SIGTERM) };
    let code = lab.wait(daemon.pid).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(code, Some(0), "daemon exit status; log:\n{log}");
    let link = lab
        .ip(&lab.receiver, &["link", "show", &lab.receiver_if])
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        !link.contains("xdp"),
        "XDP still attached after exit: {link}"
    );
    assert!(
        failures.is_empty(),
        "failed cases: {failures:?}\ndaemon log:\n{log}"
    );
}
