//! The verbs end to end against a fake daemon: a unix socket in a temporary directory served
//! by a thread that answers canned responses and records the requests.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    thread::JoinHandle,
};

use super::*;
use crate::control::{AclOrigin, CounterView, MapOccupancy};

/// A fresh directory under the system temp dir (short: socket paths are limited to 108 bytes).
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tctl-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A request as the fake daemon received it.
#[derive(Debug)]
struct Received {
    /// `GET /v1/status`
    line: String,
    headers: Vec<String>,
    body: String,
}

/// Serves one canned response per connection, in order, then stops.
struct FakeDaemon {
    dir: PathBuf,
    socket: PathBuf,
    thread: Option<JoinHandle<Vec<Received>>>,
}

impl FakeDaemon {
    fn start(responses: Vec<String>) -> FakeDaemon {
        let dir = temp_dir("fake");
        let socket = dir.join("admin.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let thread = std::thread::spawn(move || {
            let mut received = Vec::new();
            for response in responses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end().to_string();
                    if header.is_empty() {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    headers.push(header);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                received.push(Received {
                    line: line.trim_end().trim_end_matches(" HTTP/1.1").to_string(),
                    headers,
                    body: String::from_utf8(body).unwrap(),
                });
                reader.get_mut().write_all(response.as_bytes()).unwrap();
            }
            received
        });
        FakeDaemon {
            dir,
            socket,
            thread: Some(thread),
        }
    }

    fn options(&self) -> ClientOptions {
        ClientOptions {
            socket: self.socket.clone(),
            url: None,
            token: None,
        }
    }

    /// Waits for the canned responses to be served; returns the requests.
    fn finish(mut self) -> Vec<Received> {
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn json_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Chunked, in pieces of 7 bytes, the way a streaming server may send it.
fn chunked_json_response(body: &str) -> String {
    let mut out =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_string();
    for piece in body.as_bytes().chunks(7) {
        out.push_str(&format!("{:x}\r\n", piece.len()));
        out.push_str(std::str::from_utf8(piece).unwrap());
        out.push_str("\r\n");
    }
    out.push_str("0\r\n\r\n");
    out
}

fn problem_response(status: &str, problem: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\n\
         \r\n{problem}",
        problem.len()
    )
}

/// Runs a verb; returns (exit code, stdout, stderr).
fn run_verb(options: &ClientOptions, verb: Verb) -> (u8, String, String) {
    run_verb_rounds(options, verb, None)
}

fn run_verb_rounds(
    options: &ClientOptions,
    verb: Verb,
    rounds: Option<u64>,
) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = execute(
        options,
        verb,
        &mut Console {
            out: &mut out,
            err: &mut err,
            terminal: false,
            watch_rounds: rounds,
        },
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn missing_socket_options(dir: &Path) -> ClientOptions {
    ClientOptions {
        socket: dir.join("admin.sock"),
        url: None,
        token: None,
    }
}

fn status() -> Status {
    Status {
        iface: "eth0".into(),
        attach_mode: "driver".into(),
        program_id: 77,
        generation: 4,
        uptime_seconds: 3723,
        adopted: false,
        pin_dir: Some("/sys/fs/bpf/throttle".into()),
        config_path: "/etc/throttle/throttle.yaml".into(),
        maps: vec![MapOccupancy {
            name: "rules".into(),
            entries: 3,
            max_entries: 1023,
        }],
    }
}

#[test]
fn status_json_is_parsed_and_printed_again() {
    let body = serde_json::to_string(&status()).unwrap();
    let daemon = FakeDaemon::start(vec![chunked_json_response(&body)]);
    let (code, out, err) = run_verb(&daemon.options(), Verb::Status { json: true });
    assert_eq!((code, err.as_str()), (0, ""));
    // Pretty-printed, and the same value.
    assert!(out.contains("\n  \"iface\": \"eth0\",\n"), "{out}");
    assert_eq!(serde_json::from_str::<Status>(&out).unwrap(), status());
    let requests = daemon.finish();
    assert_eq!(requests[0].line, "GET /v1/status");
    assert!(requests[0].headers.contains(&"Host: localhost".to_string()));
    assert!(requests[0]
        .headers
        .contains(&"Connection: close".to_string()));
}

#[test]
fn status_human() {
    let body = serde_json::to_string(&status()).unwrap();
    let daemon = FakeDaemon::start(vec![json_response("200 OK", &body)]);
    let (code, out, _) = run_verb(&daemon.options(), Verb::Status { json: false });
    assert_eq!(code, 0);
    assert!(out.contains("interface   eth0 (driver mode)\n"), "{out}");
    assert!(out.contains("uptime      1h2m\n"), "{out}");
}

#[test]
fn an_answer_off_the_contract_fails_loudly() {
    // `program_id` missing: a daemon of another version.
    let daemon = FakeDaemon::start(vec![json_response(
        "200 OK",
        r#"{"iface":"eth0","attach_mode":"driver"}"#,
    )]);
    let (code, out, err) = run_verb(&daemon.options(), Verb::Status { json: true });
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with("throttle-ctl: unexpected answer to /v1/status"),
        "{err}"
    );
}

#[test]
fn invalid_config_on_reload_exits_2_with_every_problem() {
    let problem = r#"{"type":"about:blank","title":"invalid configuration","status":422,
        "detail":"/etc/throttle/throttle.yaml has 2 problems",
        "problems":["line 3: rules[0].limit: must be at least 1","line 9: deny[0].cidr: `x` is not an IP address or CIDR"]}"#;
    let daemon = FakeDaemon::start(vec![problem_response("422 Unprocessable Entity", problem)]);
    let (code, out, err) = run_verb(&daemon.options(), Verb::Reload);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "throttle-ctl: invalid configuration: /etc/throttle/throttle.yaml has 2 problems\n  \
         line 3: rules[0].limit: must be at least 1\n  \
         line 9: deny[0].cidr: `x` is not an IP address or CIDR\n\
         nothing changed: the running rules stay\n"
    );
    let requests = daemon.finish();
    assert_eq!(requests[0].line, "POST /v1/reload");
    assert!(requests[0]
        .headers
        .contains(&"Content-Length: 0".to_string()));
}

#[test]
fn reload_prints_the_new_generation() {
    let daemon = FakeDaemon::start(vec![json_response(
        "200 OK",
        r#"{"generation":5,"rules":3}"#,
    )]);
    let (code, out, _) = run_verb(&daemon.options(), Verb::Reload);
    assert_eq!(
        (code, out.as_str()),
        (0, "reloaded: generation 5, 3 rules\n")
    );
}

#[test]
fn server_failure_exits_1() {
    let daemon = FakeDaemon::start(vec![
        problem_response(
            "500 Internal Server Error",
            r#"{"title":"internal error","detail":"map update failed: E2BIG","problems":null}"#,
        ),
        // Not a problem at all: status and body are shown.
        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\nupstream\n".into(),
    ]);
    let (code, _, err) = run_verb(&daemon.options(), Verb::Rules { json: false });
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "throttle-ctl: internal error: map update failed: E2BIG\n"
    );
    let (code, _, err) = run_verb(&daemon.options(), Verb::Rules { json: false });
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "throttle-ctl: the daemon answered 502 Bad Gateway: upstream\n"
    );
}

#[test]
fn block_sends_the_request_of_the_contract() {
    let entry = AclEntryView {
        list: AclList::Deny,
        cidr: "198.18.0.0/24".into(),
        expires_in_seconds: Some(600),
        origin: AclOrigin::Api,
    };
    let daemon = FakeDaemon::start(vec![json_response(
        "201 Created",
        &serde_json::to_string(&entry).unwrap(),
    )]);
    let (code, out, err) = run_verb(
        &daemon.options(),
        Verb::Block {
            cidr: "198.18.0.0/24".into(),
            ttl: Some("10m".into()),
        },
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "blocked 198.18.0.0/24 for 10m\n", "")
    );
    let requests = daemon.finish();
    assert_eq!(requests[0].line, "POST /v1/acl");
    assert!(requests[0]
        .headers
        .contains(&"Content-Type: application/json".to_string()));
    let sent: AclRequest = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(
        sent,
        AclRequest {
            list: AclList::Deny,
            cidr: "198.18.0.0/24".into(),
            ttl_seconds: Some(600),
        }
    );
}

#[test]
fn unblock_and_disallow_encode_the_cidr_in_the_path() {
    let daemon = FakeDaemon::start(vec![
        "HTTP/1.1 204 No Content\r\n\r\n".into(),
        "HTTP/1.1 204 No Content\r\n\r\n".into(),
        problem_response(
            "404 Not Found",
            r#"{"title":"not found","detail":"198.18.0.9/32 is not in the denylist"}"#,
        ),
    ]);
    let (code, out, _) = run_verb(
        &daemon.options(),
        Verb::Unblock {
            cidr: "2001:db8::/32".into(),
        },
    );
    assert_eq!((code, out.as_str()), (0, "unblocked 2001:db8::/32\n"));
    let (code, out, _) = run_verb(
        &daemon.options(),
        Verb::Disallow {
            cidr: "10.1.2.3".into(),
        },
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "removed 10.1.2.3/32 from the allowlist\n")
    );
    let (code, _, err) = run_verb(
        &daemon.options(),
        Verb::Unblock {
            cidr: "198.18.0.9".into(),
        },
    );
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "throttle-ctl: not found: 198.18.0.9/32 is not in the denylist\n"
    );
    let requests = daemon.finish();
    assert_eq!(requests[0].line, "DELETE /v1/acl/deny/2001:db8::_32");
    assert_eq!(requests[1].line, "DELETE /v1/acl/allow/10.1.2.3_32");
    assert_eq!(requests[2].line, "DELETE /v1/acl/deny/198.18.0.9_32");
}

#[test]
fn top_query_and_watch_rounds() {
    let entries =
        r#"[{"source":"198.18.0.3","rule":"dns","admitted_per_second":500.0,"refused":97500}]"#;
    let daemon = FakeDaemon::start(vec![
        json_response("200 OK", entries),
        json_response("200 OK", entries),
        json_response("200 OK", entries),
    ]);
    let (code, out, _) = run_verb(
        &daemon.options(),
        Verb::Top {
            by: TopOrder::Rate,
            limit: 5,
            watch: None,
            json: false,
        },
    );
    assert_eq!(code, 0);
    assert!(out.contains("198.18.0.3  dns"), "{out}");
    let (code, out, _) = run_verb_rounds(
        &daemon.options(),
        Verb::Top {
            by: TopOrder::Drops,
            limit: 20,
            watch: Some(1),
            json: false,
        },
        Some(2),
    );
    assert_eq!(code, 0);
    assert_eq!(out.matches("top by drops, every 1s").count(), 2, "{out}");
    let requests = daemon.finish();
    assert_eq!(requests[0].line, "GET /v1/top?by=rate&limit=5");
    assert_eq!(requests[1].line, "GET /v1/top?by=drops&limit=20");
}

#[test]
fn missing_socket_exits_3() {
    let dir = temp_dir("missing");
    let (code, out, err) = run_verb(&missing_socket_options(&dir), Verb::Stats { json: false });
    assert_eq!(code, 3);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "throttle-ctl: the daemon is not running (no admin socket at {}); start it with \
             'systemctl start throttle' or 'throttle-ctl run'\n",
            dir.join("admin.sock").display()
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stale_socket_exits_3() {
    let dir = temp_dir("stale");
    // Bound, then closed: the file stays, nothing listens.
    drop(UnixListener::bind(dir.join("admin.sock")).unwrap());
    let (code, _, err) = run_verb(&missing_socket_options(&dir), Verb::Acl { json: true });
    assert_eq!(code, 3);
    assert!(
        err.contains("the daemon is not running (nothing listens"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn socket_permission_denied_says_root() {
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: root is never denied");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("perm");
    let socket = dir.join("admin.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (code, _, err) = run_verb(&missing_socket_options(&dir), Verb::Status { json: false });
    assert_eq!(code, 3);
    assert!(err.contains("root's only (mode 0600)"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_is_rejected_before_connecting() {
    // No socket at all: exit 2, not 3, proves nothing was sent.
    let dir = temp_dir("input");
    let options = missing_socket_options(&dir);
    let cases = [
        (
            Verb::Block {
                cidr: "198.18.0.1/24".into(),
                ttl: None,
            },
            "invalid CIDR: `198.18.0.1/24` has host bits set; did you mean 198.18.0.0/24?",
        ),
        (
            Verb::Allow {
                cidr: "example.com".into(),
            },
            "invalid CIDR: `example.com` is not an IP address or CIDR",
        ),
        (
            Verb::Block {
                cidr: "198.18.0.1".into(),
                ttl: Some("10".into()),
            },
            "invalid --ttl: `10` needs a unit",
        ),
        (
            Verb::Block {
                cidr: "198.18.0.1".into(),
                ttl: Some("0s".into()),
            },
            "must be more than 0 and at most 3650d",
        ),
        (
            Verb::Block {
                cidr: "198.18.0.1".into(),
                ttl: Some("3651d".into()),
            },
            "must be more than 0 and at most 3650d",
        ),
        (
            Verb::Block {
                cidr: "198.18.0.1".into(),
                ttl: Some("1500ms".into()),
            },
            "whole seconds",
        ),
        (
            Verb::Top {
                by: TopOrder::Drops,
                limit: 10,
                watch: Some(2),
                json: true,
            },
            "does not go with --json",
        ),
    ];
    for (verb, message) in cases {
        let (code, _, err) = run_verb(&options, verb.clone());
        assert_eq!(code, 2, "{verb:?}: {err}");
        assert!(err.starts_with("throttle-ctl: "), "{err}");
        assert!(err.contains(message), "{verb:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ttls() {
    assert_eq!(parse_ttl("10m"), Ok(600));
    assert_eq!(parse_ttl("1h"), Ok(3600));
    assert_eq!(parse_ttl("3650d"), Ok(3650 * 86_400));
    assert_eq!(parse_ttl("2000ms"), Ok(2));
    for bad in ["", "1", "0s", "3651d", "999ms", "1w", "-1s"] {
        assert_eq!(parse_ttl(bad).unwrap_err().code, EXIT_INVALID, "{bad}");
    }
}

#[test]
fn acl_entry_paths() {
    let path = |list, text: &str| acl_entry_path(list, &parse_cidr(text).unwrap());
    assert_eq!(
        path(AclList::Deny, "198.18.0.0/24"),
        "/v1/acl/deny/198.18.0.0_24"
    );
    assert_eq!(
        path(AclList::Allow, "10.0.0.1"),
        "/v1/acl/allow/10.0.0.1_32"
    );
    assert_eq!(
        path(AclList::Deny, " 2001:db8::/48 "),
        "/v1/acl/deny/2001:db8::_48"
    );
    assert_eq!(path(AclList::Deny, "::1"), "/v1/acl/deny/::1_128");
}

#[test]
fn exit_codes_of_statuses() {
    for (status, code) in [
        (200, 0),
        (201, 0),
        (204, 0),
        (400, 2),
        (401, 2),
        (404, 2),
        (409, 2),
        (422, 2),
        (500, 1),
        (503, 1),
        (301, 1),
    ] {
        assert_eq!(exit_code_for_status(status), code, "{status}");
    }
}

#[test]
fn unreachable_messages() {
    use std::io::{Error, ErrorKind};
    let unix = Endpoint::Unix("/run/throttle/admin.sock".into());
    let timeout = Duration::from_secs(10);
    let msg =
        |endpoint: &Endpoint, kind| unreachable_message(endpoint, &Error::from(kind), timeout);
    assert!(msg(&unix, ErrorKind::NotFound)
        .starts_with("the daemon is not running (no admin socket at /run/throttle/admin.sock)"));
    assert!(msg(&unix, ErrorKind::PermissionDenied).contains("run throttle-ctl as root"));
    let tcp = Endpoint::from_url("http://127.0.0.1:9443").unwrap();
    assert!(msg(&tcp, ErrorKind::ConnectionRefused).contains("--listen 127.0.0.1:9443"));
    assert!(msg(&tcp, ErrorKind::TimedOut).contains("within 10s"));
}

#[test]
fn unauthorized_tcp_request_hints_at_the_token() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let problem = r#"{"title":"unauthorized","detail":"missing or wrong bearer token"}"#;
        reader
            .get_mut()
            .write_all(problem_response("401 Unauthorized", problem).as_bytes())
            .unwrap();
    });
    let options = ClientOptions {
        socket: "/nonexistent".into(),
        url: Some(format!("http://127.0.0.1:{port}")),
        token: None,
    };
    let (code, _, err) = run_verb(&options, Verb::Rules { json: true });
    server.join().unwrap();
    assert_eq!(code, 2);
    assert!(
        err.starts_with("throttle-ctl: unauthorized: missing or wrong bearer token\n  "),
        "{err}"
    );
    assert!(err.contains("--token"), "{err}");
}

#[test]
fn detach_without_a_daemon_cleans_the_pin_directory() {
    let dir = temp_dir("detach");
    let options = missing_socket_options(&dir);
    // An (empty) pin directory: removed, and said so.
    let pins = dir.join("pins");
    std::fs::create_dir(&pins).unwrap();
    let (code, out, err) = run_verb(
        &options,
        Verb::Detach {
            pin_dir: pins.clone(),
        },
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("the daemon is not running"), "{out}");
    assert!(
        out.contains(&format!("removed {}", pins.display())),
        "{out}"
    );
    assert!(!pins.exists());
    // Nothing pinned: nothing to do.
    let (code, out, _) = run_verb(
        &options,
        Verb::Detach {
            pin_dir: pins.clone(),
        },
    );
    assert_eq!(code, 0);
    assert!(out.contains("nothing to detach"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn detach_through_the_daemon() {
    let daemon = FakeDaemon::start(vec!["HTTP/1.1 204 No Content\r\n\r\n".into()]);
    let (code, out, _) = run_verb(
        &daemon.options(),
        Verb::Detach {
            pin_dir: "/nonexistent/pins".into(),
        },
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("detached: the daemon removed"), "{out}");
    assert_eq!(daemon.finish()[0].line, "POST /v1/detach");
}

#[test]
fn human_tables_of_rules_stats_and_acl() {
    let rule = RuleView {
        id: 2,
        name: "api".into(),
        protocol: "tcp".into(),
        port: Some(8080),
        unit: "packets".into(),
        limit: 200,
        window_seconds: 1.0,
        action: "drop".into(),
        dscp: None,
        counters: CounterView {
            passed: 1200,
            dropped: 3_400_000,
            ..Default::default()
        },
    };
    let stats = Stats {
        generation: 2,
        global: CounterView {
            bytes_passed: 3 * 1024 * 1024,
            ..Default::default()
        },
        rules: vec![rule.clone()],
        reloads_succeeded: 1,
        reloads_failed: 0,
        over_quota_events: 12,
    };
    let daemon = FakeDaemon::start(vec![
        json_response("200 OK", &serde_json::to_string(&stats).unwrap()),
        json_response("200 OK", "[]"),
    ]);
    let (code, out, _) = run_verb(&daemon.options(), Verb::Stats { json: false });
    assert_eq!(code, 0);
    assert!(
        out.contains("reloads            1 succeeded, 0 failed\n"),
        "{out}"
    );
    assert!(out.contains("bytes passed   3.0 MiB\n"), "{out}");
    assert!(out.contains("200 packets/1s"), "{out}");
    assert!(out.contains("1.2k     3.4M"), "{out}");
    let (code, out, _) = run_verb(&daemon.options(), Verb::Acl { json: false });
    assert_eq!((code, out.as_str()), (0, "both access lists are empty\n"));
}
