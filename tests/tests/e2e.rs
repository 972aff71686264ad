//! Tier 3: the real `throttle-ctl run` attached in a receiver namespace, real UDP traffic from a
//! sender namespace over veth. Prints one ACCURACY line per case. Needs root.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use throttle_tests::{have_root, netns::Lab};

const PORT: u16 = 9000;
const LIMIT: u64 = 1000;
const WINDOW: Duration = Duration::from_millis(100);
const WINDOWS: u32 = 20;

const FLOOD_V4: &str = "198.18.0.3";
const FLOOD_V6: &str = "2001:db8::3";
const COMPLIANT_V4: &str = "198.18.0.4";
const COMPLIANT_V6: &str = "2001:db8::4";
const DENIED_V4: &str = "198.18.0.66";

fn throttle_ctl() -> PathBuf {
    let path = std::env::var_os("THROTTLE_CTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/throttle-ctl")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build` first",
        path.display()
    );
    path
}

/// Starts the daemon in the receiver namespace and waits until it enforces.
fn start_daemon(lab: &mut Lab, config: &str) -> (u32, PathBuf) {
    let dir = std::env::temp_dir().join(format!("throttle-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("throttle.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.join("daemon.log");
    let log = File::create(&log_path).unwrap();
    let receiver = lab.receiver.clone();
    let iface = lab.receiver_if.clone();
    let bin = throttle_ctl();
    let pid = lab
        .spawn(
            &receiver,
            bin.to_str().unwrap(),
            &[
                "run",
                "--config",
                config_path.to_str().unwrap(),
                "--iface",
                &iface,
                "--stats-interval",
                "0",
            ],
            log,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("\"enforcing\"") {
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (pid, log_path)
}

fn force_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: setsockopt with a valid fd and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Counts datagrams per source address on [::]:PORT until `stop` is set and the socket is idle.
fn receiver(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<HashMap<IpAddr, u64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = Lab::in_ns(&lab.receiver, move || {
        let sock = UdpSocket::bind(("::", PORT)).expect("bind receiver");
        force_rcvbuf(&sock, 256 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(()).unwrap();
        let mut counts = HashMap::new();
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) => *counts.entry(from.ip().to_canonical()).or_insert(0) += 1,
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        counts
    });
    rx.recv().expect("receiver ready");
    handle
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the current thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What a sender does over the test's duration.
#[derive(Clone, Copy)]
enum Pace {
    /// One datagram every `every`, from a thread that spins between sends.
    Flood { every: Duration },
    /// One datagram every `every`, never catching up on missed slots: at most
    /// duration / every in any window.
    Steady { every: Duration },
    /// `count` datagrams as fast as possible.
    Burst { count: u64 },
}

/// Sends from `src` for `duration` after the barrier; returns (datagrams sent, first send).
fn sender(
    lab: &Lab,
    src: &'static str,
    cpu: usize,
    pace: Pace,
    duration: Duration,
    start: Arc<Barrier>,
) -> std::thread::JoinHandle<u64> {
    Lab::in_ns(&lab.sender, move || {
        pin_to_cpu(cpu);
        let src: IpAddr = src.parse().unwrap();
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind sender");
        let dst = SocketAddr::new(Lab::receiver_addr(src), PORT);
        let payload = [0x5au8; 64];
        let mut sent = 0u64;
        start.wait();
        let t0 = Instant::now();
        let end = t0 + duration;
        match pace {
            Pace::Burst { count } => {
                for _ in 0..count {
                    sent += sock.send_to(&payload, dst).is_ok() as u64;
                }
            }
            Pace::Flood { every } => {
                // Spin-paced: the flood must be dense at every window end (a gap of 1% of a
                // window there costs 1% of that window's quota), so each flooding thread owns a
                // CPU and never sleeps.
                let mut next = t0;
                while next < end {
                    sent += sock.send_to(&payload, dst).is_ok() as u64;
                    next += every;
                    while Instant::now() < next {
                        std::hint::spin_loop();
                    }
                }
            }
            Pace::Steady { every } => {
                let mut next = t0;
                while next < end {
                    sent += sock.send_to(&payload, dst).is_ok() as u64;
                    next = (next + every).max(Instant::now());
                    let wait = next.saturating_duration_since(Instant::now());
                    if wait > Duration::from_micros(200) {
                        std::thread::sleep(wait - Duration::from_micros(100));
                    }
                    while Instant::now() < next {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        sent
    })
}

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
    let (daemon, log_path) = start_daemon(&mut lab, &config);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = receiver(&lab, stop.clone());
    let run_all =
        |plan: &[(&'static str, usize, Pace, Duration)]| -> Vec<std::thread::JoinHandle<u64>> {
            let start = Arc::new(Barrier::new(plan.len()));
            plan.iter()
                .map(|&(src, cpu, pace, d)| sender(&lab, src, cpu, pace, d, start.clone()))
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
        let plan: Vec<_> = (0..cpus)
            .map(|cpu| (src, cpu, Pace::Flood { every }, phase))
            .collect();
        flood_sent.insert(src, sum(run_all(&plan)));
    }
    let compliant_sent: Vec<u64> = compliant.into_iter().map(|h| h.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let counts = counts.join().unwrap();
    let got = |a: &str| {
        counts
            .get(&a.parse::<IpAddr>().unwrap())
            .copied()
            .unwrap_or(0)
    };

    let expected = LIMIT * WINDOWS as u64;
    let mut failures = Vec::new();
    for (case, src) in [
        ("flood-v4-all-cpus", FLOOD_V4),
        ("flood-v6-all-cpus", FLOOD_V6),
    ] {
        assert!(
            flood_sent[src] > 5 * expected,
            "{case}: only {} sent, not a flood",
            flood_sent[src]
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
    unsafe { libc::kill(daemon as i32, libc::SIGTERM) };
    let code = lab.wait(daemon).unwrap();
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
