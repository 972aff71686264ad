//! The `throttle-ctl` verbs: clients of the daemon's admin API.
//!
//! They talk HTTP/1.1 (see [`http`]) to the daemon's unix socket (`--socket`, default
//! `/run/throttle/admin.sock`, mode 0600: root only) or, with `--url http://HOST:PORT`, to its
//! optional TCP listener with a bearer token (`--token`). Every read verb prints a human table
//! by default and, with `--json`, the answer parsed into the [`crate::control`] types and
//! printed again (so a daemon answering something else fails loudly instead of printing it).
//! CIDRs and TTLs are checked here before anything is sent.
//!
//! Exit codes:
//!
//! - 0: success;
//! - 1: the daemon refused or failed (HTTP 5xx), or another runtime error (the connection
//!   broke mid-answer, an answer that is not what the contract says);
//! - 2: invalid input (HTTP 4xx, or a CIDR, TTL or option rejected before sending): nothing
//!   changed;
//! - 3: the daemon is not running or not reachable (no socket, nothing listening, permission
//!   denied on the socket, connection timeout).
//!
//! An RFC 9457 problem answer is printed as `throttle-ctl: <title>: <detail>` followed by each
//! entry of its `problems` on its own indented line.

mod http;
mod render;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use self::http::{Endpoint, Request, Response};
use crate::{
    config::{Cidr, MAX_TTL},
    control::{
        routes, AclEntryView, AclList, AclRequest, ReloadOutcome, RuleView, Stats, Status,
        TopEntry, TopOrder,
    },
    duration,
};

/// Where the daemon's admin API is.
#[derive(Args, Debug, Clone)]
pub struct ClientOptions {
    /// Admin API unix socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/throttle/admin.sock",
        env = "THROTTLE_SOCKET"
    )]
    pub socket: PathBuf,
    /// Use the TCP admin API instead, e.g. http://127.0.0.1:9443 (needs --token).
    #[arg(long, global = true, env = "THROTTLE_URL")]
    pub url: Option<String>,
    /// Bearer token for the TCP admin API.
    #[arg(long, global = true, env = "THROTTLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Verb {
    /// Interface, attach mode, program id, rule-set generation, uptime, map occupancy.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The applied rules with their counters.
    Rules {
        #[arg(long)]
        json: bool,
    },
    /// The worst sources: most refused, or highest admitted rate.
    Top {
        #[arg(long, value_enum, default_value_t = TopOrder::Drops)]
        by: TopOrder,
        /// How many sources.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Refresh every N seconds until interrupted (not with --json).
        #[arg(long)]
        watch: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Global and per-rule counters, reloads, over-quota events.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The allow and deny lists, from the config and from the API.
    Acl {
        #[arg(long)]
        json: bool,
    },
    /// Add a source (address or CIDR) to the denylist, optionally for a time (e.g. 10m, 1h).
    Block {
        cidr: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Remove a denylist entry added with `block`.
    Unblock { cidr: String },
    /// Add a source (address or CIDR) to the allowlist: never limited.
    Allow { cidr: String },
    /// Remove an allowlist entry added with `allow`.
    Disallow { cidr: String },
    /// Re-read the config file and apply it; a bad config is rejected and the running rules stay.
    Reload,
    /// Detach the XDP program and remove its pins (stops enforcement), through the daemon if
    /// it runs, else directly from the pin directory.
    Detach {
        /// Pin directory to clean up when no daemon is running.
        #[arg(long, default_value = "/sys/fs/bpf/throttle")]
        pin_dir: PathBuf,
    },
}

/// Success.
pub const EXIT_OK: u8 = 0;
/// The daemon refused or failed (5xx), or another runtime error.
pub const EXIT_FAILED: u8 = 1;
/// Invalid input (4xx or rejected locally): nothing changed.
pub const EXIT_INVALID: u8 = 2;
/// The daemon is not running or not reachable.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Runs one verb against the daemon.
pub fn run(client: &ClientOptions, verb: Verb) -> ExitCode {
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut console = Console {
        out: &mut stdout.lock(),
        err: &mut io::stderr().lock(),
        terminal,
        watch_rounds: None,
    };
    ExitCode::from(execute(client, verb, &mut console))
}

/// Where a verb writes, so tests can capture it.
pub(crate) struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// stdout is a terminal: `top --watch` clears the screen between rounds.
    pub terminal: bool,
    /// Stop `top --watch` after that many rounds (tests); None: until interrupted.
    pub watch_rounds: Option<u64>,
}

/// Why a verb failed: its exit code and the message lines (the first one gets the
/// `throttle-ctl: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: u8,
    pub lines: Vec<String>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            lines: vec![message.into()],
        }
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_INVALID, message)
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                text.push_str("throttle-ctl: ");
            }
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Runs a verb; returns the exit code.
pub(crate) fn execute(client: &ClientOptions, verb: Verb, console: &mut Console<'_>) -> u8 {
    let result = Api::new(client).and_then(|api| verb_output(&api, verb, console));
    let (code, text, to_stdout) = match result {
        Ok(text) => (EXIT_OK, text, true),
        Err(failure) => (failure.code, failure.render(), false),
    };
    let sink: &mut dyn Write = if to_stdout {
        &mut *console.out
    } else {
        &mut *console.err
    };
    match sink.write_all(text.as_bytes()).and_then(|()| sink.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => code.max(EXIT_FAILED),
        Err(e) => {
            let _ = writeln!(console.err, "throttle-ctl: cannot write the output: {e}");
            code.max(EXIT_FAILED)
        }
    }
}

/// Runs a verb; returns what it prints on success (`top --watch` writes by itself and returns
/// nothing).
fn verb_output(api: &Api, verb: Verb, console: &mut Console<'_>) -> Result<String, Failure> {
    match verb {
        Verb::Status { json } => {
            let status: Status = api.get(routes::STATUS)?;
            output(&status, json, render::status)
        }
        Verb::Rules { json } => {
            let rules: Vec<RuleView> = api.get(routes::RULES)?;
            output(&rules, json, |r| render::rules(r))
        }
        Verb::Top {
            by,
            limit,
            watch,
            json,
        } => {
            if limit == 0 {
                return Err(Failure::invalid("--limit must be at least 1"));
            }
            let path = top_path(by, limit);
            match watch {
                None => {
                    let entries: Vec<TopEntry> = api.get(&path)?;
                    output(&entries, json, |e| render::top(e, by))
                }
                Some(_) if json => Err(Failure::invalid(
                    "--watch redraws a table; it does not go with --json (poll `top --json` \
                     instead)",
                )),
                Some(0) => Err(Failure::invalid(
                    "--watch takes a period of 1 second or more",
                )),
                Some(seconds) => {
                    watch_top(api, &path, by, seconds, console).map(|()| String::new())
                }
            }
        }
        Verb::Stats { json } => {
            let stats: Stats = api.get(routes::STATS)?;
            output(&stats, json, render::stats)
        }
        Verb::Acl { json } => {
            let entries: Vec<AclEntryView> = api.get(routes::ACL)?;
            output(&entries, json, |e| render::acl(e))
        }
        Verb::Block { cidr, ttl } => {
            let request = AclRequest {
                list: AclList::Deny,
                cidr: parse_cidr(&cidr)?.to_string(),
                ttl_seconds: ttl.as_deref().map(parse_ttl).transpose()?,
            };
            let entry: AclEntryView = api.post(routes::ACL, Some(&request))?;
            Ok(render::acl_added(&entry))
        }
        Verb::Allow { cidr } => {
            let request = AclRequest {
                list: AclList::Allow,
                cidr: parse_cidr(&cidr)?.to_string(),
                ttl_seconds: None,
            };
            let entry: AclEntryView = api.post(routes::ACL, Some(&request))?;
            Ok(render::acl_added(&entry))
        }
        Verb::Unblock { cidr } => {
            let cidr = parse_cidr(&cidr)?;
            api.delete(&acl_entry_path(AclList::Deny, &cidr))?;
            Ok(format!("unblocked {cidr}\n"))
        }
        Verb::Disallow { cidr } => {
            let cidr = parse_cidr(&cidr)?;
            api.delete(&acl_entry_path(AclList::Allow, &cidr))?;
            Ok(format!("removed {cidr} from the allowlist\n"))
        }
        Verb::Reload => {
            let outcome: ReloadOutcome =
                api.post(routes::RELOAD, None::<&()>).map_err(|mut f| {
                    if f.code == EXIT_INVALID {
                        f.lines
                            .push("nothing changed: the running rules stay".into());
                    }
                    f
                })?;
            let plural = if outcome.rules == 1 { "" } else { "s" };
            Ok(format!(
                "reloaded: generation {}, {} rule{plural}\n",
                outcome.generation, outcome.rules
            ))
        }
        Verb::Detach { pin_dir } => detach(api, &pin_dir),
    }
}

/// The answer as JSON (`--json`) or as the human rendering.
fn output<T: Serialize>(
    value: &T,
    json: bool,
    human: impl Fn(&T) -> String,
) -> Result<String, Failure> {
    if json {
        serde_json::to_string_pretty(value)
            .map(|text| text + "\n")
            .map_err(|e| Failure::new(EXIT_FAILED, format!("cannot print JSON: {e}")))
    } else {
        Ok(human(value))
    }
}

fn top_path(by: TopOrder, limit: usize) -> String {
    let by = match by {
        TopOrder::Drops => "drops",
        TopOrder::Rate => "rate",
    };
    format!("{}?by={by}&limit={limit}", routes::TOP)
}

/// `top --watch`: redraws until interrupted. A daemon that goes away (a restart) is shown and
/// retried; a refused request (4xx) ends it.
fn watch_top(
    api: &Api,
    path: &str,
    by: TopOrder,
    seconds: u64,
    console: &mut Console<'_>,
) -> Result<(), Failure> {
    let mut round = 0;
    loop {
        let body = match api.get::<Vec<TopEntry>>(path) {
            Ok(entries) => render::top(&entries, by),
            Err(f) if f.code == EXIT_INVALID => return Err(f),
            Err(f) => format!("{}(retrying)\n", f.render()),
        };
        let clear = if console.terminal {
            "\x1b[H\x1b[2J"
        } else {
            ""
        };
        let frame = format!(
            "{clear}top by {}, every {seconds}s (Ctrl-C to stop)\n\n{body}\n",
            match by {
                TopOrder::Drops => "drops",
                TopOrder::Rate => "rate",
            }
        );
        if let Err(e) = console
            .out
            .write_all(frame.as_bytes())
            .and_then(|()| console.out.flush())
        {
            return Err(if e.kind() == io::ErrorKind::BrokenPipe {
                Failure {
                    code: EXIT_FAILED,
                    lines: Vec::new(),
                }
            } else {
                Failure::new(EXIT_FAILED, format!("cannot write the output: {e}"))
            });
        }
        round += 1;
        if console.watch_rounds.is_some_and(|max| round >= max) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(seconds));
    }
}

/// `detach`: through the daemon if it runs; else straight from the pin directory (local
/// socket only: with `--url` the pins are on another host).
fn detach(api: &Api, pin_dir: &Path) -> Result<String, Failure> {
    match api.send("POST", routes::DETACH, None) {
        Ok(response) if (200..300).contains(&response.status) => Ok(
            "detached: the daemon removed the XDP program and its pins and is exiting; \
             enforcement stopped\n"
                .into(),
        ),
        Ok(response) => Err(api.failure_from(&response)),
        Err(http::ClientError::Connect {
            endpoint: Endpoint::Unix(socket),
            source,
        }) if matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ) =>
        {
            let not_running = if source.kind() == io::ErrorKind::NotFound {
                format!(
                    "the daemon is not running (no admin socket at {})",
                    socket.display()
                )
            } else {
                format!(
                    "the daemon is not running (nothing listens on {})",
                    socket.display()
                )
            };
            match crate::dataplane::detach_pinned(pin_dir) {
                Ok(true) => Ok(format!(
                    "{not_running}; detached the pinned XDP program and removed {}: \
                     enforcement stopped\n",
                    pin_dir.display()
                )),
                Ok(false) => Ok(format!(
                    "{not_running} and nothing is pinned at {}: nothing to detach\n",
                    pin_dir.display()
                )),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(Failure::new(
                    EXIT_FAILED,
                    format!(
                        "{not_running}; removing the pins at {} needs root: {e}",
                        pin_dir.display()
                    ),
                )),
                Err(e) => Err(Failure::new(
                    EXIT_FAILED,
                    format!(
                        "{not_running}; could not remove the pins at {}: {e}",
                        pin_dir.display()
                    ),
                )),
            }
        }
        Err(e) => Err(api.failure_from_client_error(e)),
    }
}

/// An address or CIDR, checked with the config's own rules (no host bits).
pub(crate) fn parse_cidr(text: &str) -> Result<Cidr, Failure> {
    text.trim()
        .parse::<Cidr>()
        .map_err(|e| Failure::invalid(format!("invalid CIDR: {e}")))
}

/// `--ttl`: a duration of whole seconds, more than 0 and at most the config's maximum.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, Failure> {
    let ttl = duration::parse(text).map_err(|e| Failure::invalid(format!("invalid --ttl: {e}")))?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Failure::invalid(format!(
            "invalid --ttl `{text}`: must be more than 0 and at most 3650d; leave --ttl out for \
             an entry that never expires"
        )));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(Failure::invalid(format!(
            "invalid --ttl `{text}`: TTLs are whole seconds (e.g. 90s, 10m, 1h)"
        )));
    }
    Ok(ttl.as_secs())
}

/// `DELETE /v1/acl/{list}/{cidr}` with the CIDR's `/` written as `_`.
pub(crate) fn acl_entry_path(list: AclList, cidr: &Cidr) -> String {
    routes::ACL_ENTRY
        .replace("{list}", list.as_str())
        .replace("{cidr}", &cidr.to_string().replace('/', "_"))
}

/// The exit code for an HTTP status: 2xx 0, 4xx 2 (invalid input, nothing changed), anything
/// else 1.
pub(crate) fn exit_code_for_status(status: u16) -> u8 {
    match status {
        200..=299 => EXIT_OK,
        400..=499 => EXIT_INVALID,
        _ => EXIT_FAILED,
    }
}

/// An RFC 9457 problem (`application/problem+json`) as the admin API sends it.
#[derive(Debug, Deserialize)]
struct Problem {
    title: Option<String>,
    detail: Option<String>,
    /// Every problem found (e.g. each error of a rejected config).
    #[serde(default)]
    problems: Option<Vec<serde_json::Value>>,
}

/// The admin API of one daemon.
struct Api {
    client: http::Client,
}

impl Api {
    fn new(options: &ClientOptions) -> Result<Api, Failure> {
        let endpoint = match &options.url {
            Some(url) => Endpoint::from_url(url).map_err(Failure::invalid)?,
            None => Endpoint::Unix(options.socket.clone()),
        };
        let token = options.token.clone().filter(|t| !t.is_empty());
        if let Some(token) = &token {
            if token.chars().any(|c| c.is_ascii_control() || c == ' ') {
                return Err(Failure::invalid(
                    "--token must not contain spaces or control characters",
                ));
            }
        }
        Ok(Api {
            client: http::Client::new(endpoint, token),
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, http::ClientError> {
        self.client.send(&Request { method, path, body })
    }

    /// Sends and checks the status; the body of a 2xx answer is returned.
    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Response, Failure> {
        let response = self
            .send(method, path, body)
            .map_err(|e| self.failure_from_client_error(e))?;
        if exit_code_for_status(response.status) == EXIT_OK {
            Ok(response)
        } else {
            Err(self.failure_from(&response))
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let response = self.call("GET", path, None)?;
        decode(&response, path)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Failure> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Failure::new(EXIT_FAILED, format!("cannot encode the request: {e}")))?;
        let response = self.call("POST", path, body)?;
        decode(&response, path)
    }

    fn delete(&self, path: &str) -> Result<(), Failure> {
        self.call("DELETE", path, None).map(drop)
    }

    /// A refusal: the problem's title, detail and problems, or the status and the start of
    /// the body when the answer is not a problem.
    fn failure_from(&self, response: &Response) -> Failure {
        let code = exit_code_for_status(response.status);
        let code = if code == EXIT_OK { EXIT_FAILED } else { code };
        let problem = serde_json::from_slice::<Problem>(&response.body)
            .ok()
            .filter(|p| response.is_problem() || p.title.is_some());
        let mut lines = match problem {
            Some(problem) => problem_lines(problem, response),
            None => {
                let text = String::from_utf8_lossy(&response.body);
                let text = text.trim();
                let mut line = format!(
                    "the daemon answered {} {}",
                    response.status, response.reason
                );
                if !text.is_empty() {
                    let short: String = text.chars().take(300).collect();
                    line.push_str(&format!(": {}", short.replace('\n', " ")));
                }
                vec![line]
            }
        };
        if response.status == 401 {
            lines.push(match &self.client.token {
                None => "  the TCP admin API needs its bearer token: pass --token or set \
                              THROTTLE_TOKEN"
                    .into(),
                _ => "  the token was not accepted: check it against the daemon's --token-file"
                    .into(),
            });
        }
        Failure { code, lines }
    }

    /// No answer: the daemon is not reachable (3), or the exchange broke (1).
    fn failure_from_client_error(&self, error: http::ClientError) -> Failure {
        match error {
            http::ClientError::Connect { endpoint, source } => Failure::new(
                EXIT_UNREACHABLE,
                unreachable_message(&endpoint, &source, self.client.timeout),
            ),
            other => Failure::new(EXIT_FAILED, other.to_string()),
        }
    }
}

fn problem_lines(problem: Problem, response: &Response) -> Vec<String> {
    let title = problem
        .title
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| {
            format!("{} {}", response.status, response.reason)
                .trim()
                .to_string()
        });
    let first = match problem
        .detail
        .filter(|d| !d.trim().is_empty() && *d != title)
    {
        Some(detail) => format!("{title}: {detail}"),
        None => title,
    };
    std::iter::once(first)
        .chain(problem.problems.into_iter().flatten().map(|p| match p {
            serde_json::Value::String(s) => format!("  {s}"),
            other => format!("  {other}"),
        }))
        .collect()
}

/// Why the daemon cannot be reached, and what to do about it.
pub(crate) fn unreachable_message(
    endpoint: &Endpoint,
    error: &io::Error,
    timeout: Duration,
) -> String {
    let start = "start it with 'systemctl start throttle' or 'throttle-ctl run'";
    match (endpoint, error.kind()) {
        (Endpoint::Unix(path), io::ErrorKind::NotFound) => format!(
            "the daemon is not running (no admin socket at {}); {start}",
            path.display()
        ),
        (Endpoint::Unix(path), io::ErrorKind::ConnectionRefused) => format!(
            "the daemon is not running (nothing listens on the admin socket {}); {start}",
            path.display()
        ),
        (Endpoint::Unix(path), io::ErrorKind::PermissionDenied) => format!(
            "permission denied on the admin socket {}: it is root's only (mode 0600); run \
             throttle-ctl as root, e.g. with sudo",
            path.display()
        ),
        (Endpoint::Tcp { address, .. }, io::ErrorKind::ConnectionRefused) => {
            format!("nothing listens at {address}: is the daemon running, with --listen {address}?")
        }
        (Endpoint::Tcp { address, .. }, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            format!(
                "no answer from {address} within {}s: the daemon is not reachable",
                timeout.as_secs()
            )
        }
        (endpoint, _) => format!(
            "the daemon is not reachable: cannot connect to the {}: {error}",
            endpoint.describe()
        ),
    }
}

/// A 2xx body parsed into the contract's type; anything else is a mismatch between this
/// client and the daemon, reported as such.
fn decode<T: DeserializeOwned>(response: &Response, path: &str) -> Result<T, Failure> {
    serde_json::from_slice(&response.body).map_err(|e| {
        Failure::new(
            EXIT_FAILED,
            format!(
                "unexpected answer to {path} (is the daemon the same version as this \
                 throttle-ctl?): {e}"
            ),
        )
    })
}
