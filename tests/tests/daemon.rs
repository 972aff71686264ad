//! Tier 3: the real daemon's lifecycle and admin API, in network namespaces with real traffic.
//! Pinning and adoption across `kill -9`, reload under traffic, every CLI verb, and the admin
//! API's guards. Needs root.

use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use throttle_ctl::control::{AclEntryView, AclOrigin, RuleView, Stats, Status, TopEntry};
use throttle_tests::{
    daemon::{Daemon, PinDir},
    have_root,
    netns::Lab,
    traffic::{receiver, sender, Pace, Received},
};

const PORT: u16 = 9000;
const FLOOD: &str = "198.18.0.3";
const OTHER: &str = "198.18.0.5";

fn config(limit: u64) -> String {
    format!("rules:\n  - {{name: api, protocol: udp, port: {PORT}, limit: {limit}, window: 100ms}}\nallow: [198.18.0.77]\n")
}

/// What got through from `source` during `d`.
fn through_during(received: &Received, source: &str, d: Duration) -> u64 {
    let before = received.from(source);
    std::thread::sleep(d);
    received.from(source) - before
}

fn link_has_xdp(lab: &Lab) -> bool {
    let out = lab
        .ip(&lab.receiver, &["link", "show", &lab.receiver_if])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn enforcement_survives_kill_9_and_a_restart_adopts_the_pins() {
    if !have_root("enforcement_survives_kill_9_and_a_restart_adopts_the_pins") {
        return;
    }
    let pins = PinDir::new("adopt");
    let mut lab = Lab::new("adopt", 1, &[FLOOD]).unwrap();
    let pin_arg = pins.path().to_str().unwrap().to_string();
    let first = Daemon::start(&mut lab, "adopt", &config(100), &["--pin-dir", &pin_arg]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    let flooding = {
        let start = Arc::new(Barrier::new(1));
        sender(
            &lab,
            FLOOD,
            PORT,
            0,
            Pace::Flood {
                every: Duration::from_micros(20),
            },
            Duration::from_secs(4),
            start,
        )
    };
    // 100 per 100 ms is 1000/s; the flood is 50000/s.
    let running = through_during(&received, FLOOD, Duration::from_millis(800));
    let before: Stats = first.json(&["stats"]).unwrap();
    assert!(first
        .ctl(&["block", "198.18.0.99", "--ttl", "1h"])
        .status
        .success());

    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
    lab.wait(first.pid).unwrap();
    let while_down = through_during(&received, FLOOD, Duration::from_millis(800));
    assert!(link_has_xdp(&lab), "the pinned program stays attached");

    let second = Daemon::start(&mut lab, "adopt", "", &["--pin-dir", &pin_arg]).unwrap();
    let after_restart = through_during(&received, FLOOD, Duration::from_millis(800));
    let status: Status = second.json(&["status"]).unwrap();
    let after: Stats = second.json(&["stats"]).unwrap();
    flooding.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();

    println!("THROUGH running={running} while_down={while_down} after_restart={after_restart} (limit 800 per 800 ms)");
    for (phase, n) in [
        ("running", running),
        ("while down", while_down),
        ("after restart", after_restart),
    ] {
        assert!(
            (600..=1000).contains(&n),
            "{phase}: {n} got through, the limit allows about 800"
        );
    }
    assert!(status.adopted, "the second daemon adopted the pins");
    let acl: Vec<AclEntryView> = second.json(&["acl"]).unwrap();
    let kept = acl
        .iter()
        .find(|e| e.cidr == "198.18.0.99/32")
        .expect("the API's entry survived the restart");
    assert_eq!(kept.origin, AclOrigin::Api);
    assert!(
        kept.expires_in_seconds.is_some_and(|s| s > 3500),
        "with its TTL: {kept:?}"
    );
    assert!(
        second.log_text().contains("took over the pinned link"),
        "{}",
        second.log_text()
    );
    assert_eq!(
        status.generation,
        before.generation + 1,
        "generations continue"
    );
    assert!(
        after.global.dropped > before.global.dropped,
        "counters continue from where they were"
    );
    assert!(after.rules[0].counters.passed >= before.rules[0].counters.passed + 600);

    // SIGTERM: the daemon exits 0 and leaves the program enforcing.
    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(second.pid as i32, libc::SIGTERM) };
    assert_eq!(
        lab.wait(second.pid).unwrap(),
        Some(0),
        "{}",
        second.log_text()
    );
    assert!(link_has_xdp(&lab), "still enforcing after SIGTERM");
    assert!(second.log_text().contains("keeps enforcing"));

    // detach with no daemon running works from the pins: the program and the pins are gone.
    let out = second.ctl(&["detach", "--pin-dir", &pin_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!link_has_xdp(&lab));
    assert!(!pins.path().exists());
}

#[test]
fn reload_under_traffic_changes_limits_and_rejects_bad_configs() {
    if !have_root("reload_under_traffic_changes_limits_and_rejects_bad_configs") {
        return;
    }
    let mut lab = Lab::new("reload", 1, &[FLOOD]).unwrap();
    let daemon = Daemon::start(&mut lab, "reload", &config(100), &["--no-pin"]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    let flooding = sender(
        &lab,
        FLOOD,
        PORT,
        0,
        Pace::Flood {
            every: Duration::from_micros(20),
        },
        Duration::from_secs(4),
        Arc::new(Barrier::new(1)),
    );
    let low = through_during(&received, FLOOD, Duration::from_millis(1000));

    std::fs::write(&daemon.config, config(300)).unwrap();
    let t = Instant::now();
    let out = daemon.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let high = through_during(&received, FLOOD, Duration::from_millis(1000));

    // A bad config is rejected with its problems; the 300 limit stays.
    std::fs::write(
        &daemon.config,
        "rules:\n  - {name: api, protocol: udp, port: 9000, limit: 0, window: 100ms}\n",
    )
    .unwrap();
    let out = daemon.ctl(&["reload"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after_bad = through_during(&received, FLOOD, Duration::from_millis(1000));
    flooding.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();
    let stats: Stats = daemon.json(&["stats"]).unwrap();

    println!(
        "THROUGH limit100={low} limit300={high} after_bad_reload={after_bad} reload_took={:?}",
        t.elapsed()
    );
    assert!((800..=1200).contains(&low), "limit 100/100ms: {low} in 1 s");
    // The new limit applies from the reload on; the window carries over, so the first 100 ms
    // may still count the old rate: never more than what either limit allows.
    assert!(
        (2500..=3100).contains(&high),
        "limit 300/100ms: {high} in 1 s"
    );
    assert!(
        (2700..=3300).contains(&after_bad),
        "old rules still enforced: {after_bad} in 1 s"
    );
    assert_eq!((stats.reloads_succeeded, stats.reloads_failed), (1, 1));
    assert_eq!(stats.generation, 2);

    // SIGHUP reloads the same way.
    std::fs::write(&daemon.config, config(200)).unwrap();
    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(daemon.pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.json::<Status>(&["status"]).unwrap().generation != 3 {
        assert!(
            Instant::now() < deadline,
            "no reload on SIGHUP:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        daemon.json::<Vec<RuleView>>(&["rules"]).unwrap()[0].limit,
        200
    );

    // A config that needs more rule ids than the running program was loaded with (its
    // max_rules is fixed at load) is refused like an invalid one; the rules stay.
    let many: String = (1..=1024)
        .map(|i| {
            format!(
                "  - {{name: r{i}, protocol: udp, port: {}, limit: 5, window: 1s}}\n",
                10_000 + i
            )
        })
        .collect();
    std::fs::write(&daemon.config, format!("max_rules: 2048\nrules:\n{many}")).unwrap();
    let out = daemon.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1024 rules; the running program has room for 1023"),
        "{stderr}"
    );
    assert_eq!(daemon.json::<Status>(&["status"]).unwrap().generation, 3);
    assert_eq!(daemon.json::<Vec<RuleView>>(&["rules"]).unwrap().len(), 1);
}

#[test]
fn every_verb_works_against_the_running_daemon() {
    if !have_root("every_verb_works_against_the_running_daemon") {
        return;
    }
    let mut lab = Lab::new("verbs", 1, &[FLOOD, OTHER]).unwrap();
    let daemon = Daemon::start(&mut lab, "verbs", &config(50), &["--no-pin"]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    sender(
        &lab,
        FLOOD,
        PORT,
        0,
        Pace::Flood {
            every: Duration::from_micros(50),
        },
        Duration::from_millis(600),
        Arc::new(Barrier::new(1)),
    )
    .join()
    .unwrap();

    let status: Status = daemon.json(&["status"]).unwrap();
    assert_eq!(
        (status.iface.as_str(), status.generation, status.adopted),
        (lab.receiver_if.as_str(), 1, false)
    );
    assert!(status
        .maps
        .iter()
        .any(|m| m.name == "sources" && m.entries >= 1));
    let rules: Vec<RuleView> = daemon.json(&["rules"]).unwrap();
    assert_eq!((rules[0].name.as_str(), rules[0].limit), ("api", 50));
    assert!(rules[0].counters.dropped > 0);
    let top: Vec<TopEntry> = daemon.json(&["top", "--by", "drops"]).unwrap();
    assert_eq!(top[0].source, FLOOD);
    assert!(top[0].refused > 0);
    let stats: Stats = daemon.json(&["stats"]).unwrap();
    assert!(
        stats.global.dropped > 0 && stats.over_quota_events > 0,
        "{stats:?}"
    );
    assert!(daemon.log_text().contains("over quota"));

    // block: traffic from OTHER stops, the entry is listed as the API's, unblock restores it.
    assert!(daemon
        .ctl(&["block", &format!("{OTHER}/32"), "--ttl", "1h"])
        .status
        .success());
    let acl: Vec<AclEntryView> = daemon.json(&["acl"]).unwrap();
    let entry = acl
        .iter()
        .find(|e| e.cidr == format!("{OTHER}/32"))
        .expect("blocked entry listed");
    assert_eq!(entry.origin, AclOrigin::Api);
    assert!(entry
        .expires_in_seconds
        .is_some_and(|s| (3590..=3600).contains(&s)));
    let burst = |n| {
        sender(
            &lab,
            OTHER,
            PORT,
            0,
            Pace::Burst { count: n },
            Duration::ZERO,
            Arc::new(Barrier::new(1)),
        )
        .join()
        .unwrap();
    };
    let before = received.from(OTHER);
    burst(20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received.from(OTHER), before, "blocked source got through");
    assert!(daemon
        .ctl(&["unblock", &format!("{OTHER}/32")])
        .status
        .success());
    burst(20);
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.from(OTHER) < before + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(received.from(OTHER), before + 20);
    // A deny inside an allow entry would do nothing: refused.
    let out = daemon.ctl(&["block", "198.18.0.77"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // allow / disallow.
    assert!(daemon.ctl(&["allow", "198.18.0.0/24"]).status.success());
    assert!(daemon
        .json::<Vec<AclEntryView>>(&["acl"])
        .unwrap()
        .iter()
        .any(|e| e.cidr == "198.18.0.0/24"));
    assert!(daemon.ctl(&["disallow", "198.18.0.0/24"]).status.success());
    // Config entries are changed through the config, not the API.
    let out = daemon.ctl(&["disallow", "198.18.0.77"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad input: exit 2, nothing changed.
    let acl_before: Vec<AclEntryView> = daemon.json(&["acl"]).unwrap();
    for bad in [
        vec!["block", "300.1.1.1"],
        vec!["block", "198.18.0.9", "--ttl", "forever"],
        vec!["unblock", "198.18.9.9"],
    ] {
        let out = daemon.ctl(&bad.iter().map(|s| &**s).collect::<Vec<_>>());
        assert!(
            matches!(out.status.code(), Some(2)),
            "{bad:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        daemon.json::<Vec<AclEntryView>>(&["acl"]).unwrap(),
        acl_before
    );
    // reload (same config): a new generation.
    assert!(daemon.ctl(&["reload"]).status.success());
    assert_eq!(daemon.json::<Status>(&["status"]).unwrap().generation, 2);
    // Human output of every read verb.
    for verb in ["status", "rules", "top", "stats", "acl"] {
        let out = daemon.ctl(&[verb]);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();

    // Metrics from the real maps pass promtool's lint.
    let metrics = raw_request(&daemon, "GET", "/metrics", "");
    let body = metrics
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        body.contains("throttle_packets_total{rule=\"api\",verdict=\"dropped\"}"),
        "{body}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(body.as_bytes());
    if let Some(out) = promtool.take() {
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = daemon.ctl(&["completions", "bash"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("throttle-ctl"));

    // The socket is 0600; raw API: invalid inputs are 4xx problem+json.
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    for (method, path, body, status) in [
        (
            "POST",
            "/v1/acl",
            r#"{"list":"deny","cidr":"1.2.3.4","ttl_seconds":-5}"#,
            400,
        ),
        ("POST", "/v1/acl", r#"{"list":"deny","cidr":"1.2.3"}"#, 400),
        (
            "POST",
            "/v1/acl",
            r#"{"list":"deny","cidr":"1.2.3.4","ttl_seconds":0}"#,
            400,
        ),
        ("DELETE", "/v1/acl/maybe/1.2.3.4", "", 400),
        ("GET", "/v1/nothing", "", 404),
    ] {
        let request = format!("{method} {path} {body}");
        let answer = raw_request(&daemon, method, path, body);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}\n=> {answer}"
        );
        assert!(
            answer
                .to_lowercase()
                .contains("content-type: application/problem+json"),
            "{answer}"
        );
    }
    assert_eq!(
        daemon.json::<Vec<AclEntryView>>(&["acl"]).unwrap(),
        acl_before,
        "nothing changed"
    );

    // detach through the daemon: it detaches the program and exits.
    assert!(link_has_xdp(&lab));
    let out = daemon.ctl(&["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lab.wait(daemon.pid).unwrap(),
        Some(0),
        "{}",
        daemon.log_text()
    );
    assert!(!link_has_xdp(&lab));
    // The daemon is not running: a clear message and exit 3.
    let out = daemon.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn the_tcp_admin_api_requires_its_token() {
    if !have_root("the_tcp_admin_api_requires_its_token") {
        return;
    }
    let mut lab = Lab::new("tcp", 1, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("throttle-tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start(
        &mut lab,
        "tcp",
        &config(100),
        &[
            "--no-pin",
            "--listen",
            "127.0.0.1:9443",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .unwrap();
    let ask = |auth: Option<&'static str>| {
        Lab::in_ns(&lab.receiver, move || {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9443").expect("connect");
            let header = auth
                .map(|a| format!("Authorization: Bearer {a}\r\n"))
                .unwrap_or_default();
            write!(
                s,
                "GET /v1/status HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        })
        .join()
        .unwrap()
    };
    assert!(ask(None).starts_with("HTTP/1.1 401"), "no token");
    assert!(
        ask(Some("wrong")).starts_with("HTTP/1.1 401"),
        "wrong token"
    );
    assert!(
        ask(Some("s3cret-token")).starts_with("HTTP/1.1 200"),
        "right token"
    );
    // SAFETY: kill on the daemon's pid, which the lab has not reaped yet.
    unsafe { libc::kill(daemon.pid as i32, libc::SIGTERM) };
    assert_eq!(lab.wait(daemon.pid).unwrap(), Some(0));

    // Without a token, or with one others can read, it does not start at all.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            daemon.config.to_str().unwrap(),
            "--iface",
            "lo",
            "--no-pin",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(throttle_tests::daemon::throttle_ctl())
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--listen", "127.0.0.1:9443"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--token-file"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let socket = dir.join("other.sock");
    let (code, err) = run(&[
        "--listen",
        "127.0.0.1:9443",
        "--token-file",
        token.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("readable by others"), "{err}");
}

/// Runs a command with `input` on its stdin; None when the program is not installed (then the
/// caller skips, unless THROTTLE_TEST_TOOLS_REQUIRED says it must be there).
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output>;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output> {
        let mut child = match self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(_) if std::env::var_os("THROTTLE_TEST_TOOLS_REQUIRED").is_none() => {
                eprintln!("SKIPPED: promtool not installed");
                return None;
            }
            Err(e) => panic!("promtool: {e}"),
        };
        child.stdin.take().unwrap().write_all(input).unwrap();
        Some(child.wait_with_output().unwrap())
    }
}

fn raw_request(daemon: &Daemon, method: &str, path: &str, body: &str) -> String {
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}
