//! `throttle.yaml`: the serde model, its validation, and the compiled rule set for the maps.
//!
//! Two steps: serde reads the file (syntax, types and unknown fields are reported by serde_yaml
//! with their path and line), then [`validate`] checks values and cross-references and reports
//! every problem at once, each with its path and line, e.g.
//! `line 12, rules[1].limit: must be between 1 and 8796093022208`.

use std::{collections::HashSet, fmt, net::IpAddr, path::Path, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;
use throttle_common::{
    proto,
    window::{MAX_LIMIT, MAX_WINDOW_NS},
    Action, Rule, Unit, ANY_PORT, DEFAULT_MAX_RULES, DEFAULT_MAX_SOURCES, MAX_CIDRS, MAX_RULES,
};

use crate::{duration, yaml_lines::LineIndex};

/// Shortest window: below it, a window is over before a packet's decision is.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);
/// Longest denylist TTL (ten years); leave `ttl` out for an entry that never expires.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// Largest `max_sources`: 64 Mi entries (about 7 GiB of kernel memory).
pub const MAX_SOURCES_LIMIT: u32 = 1 << 26;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Syntax {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), Problem::list(.problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// One validation problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, e.g. `rules[2].window`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn list(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}, {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// The configuration file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    max_sources: Option<u64>,
    #[serde(default)]
    max_rules: Option<u64>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<RawDeny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    protocol: Protocol,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    unit: UnitConfig,
    limit: u64,
    window: String,
    #[serde(default)]
    action: ActionConfig,
    #[serde(default)]
    dscp: Option<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    cidr: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interface to attach to; `--iface` overrides it.
    pub interface: Option<String>,
    /// Size of the per-(source, rule) table; least recently used sources are evicted beyond it.
    pub max_sources: u32,
    /// Rule ids the program has counters for (ids 1..max_rules): at most `max_rules - 1`
    /// rules. Costs 96 bytes per CPU each.
    pub max_rules: u32,
    pub rules: Vec<RuleConfig>,
    /// Sources never limited (monitoring, health checkers, peers).
    pub allow: Vec<Cidr>,
    /// Sources always dropped, optionally for a time.
    pub deny: Vec<DenyConfig>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Syntax { source, .. } => ConfigError::Syntax {
                path: shown,
                source,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: shown,
                problems,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Syntax {
            path: "<config>".into(),
            source,
        })?;
        validate(raw).map_err(|problems| {
            let lines = LineIndex::new(text);
            let problems = problems
                .into_iter()
                .map(|(path, message)| Problem {
                    line: lines.line_of(&path),
                    path,
                    message,
                })
                .collect();
            ConfigError::Invalid {
                path: "<config>".into(),
                problems,
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Icmp => proto::ICMP,
            Protocol::Icmpv6 => proto::ICMPV6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitConfig {
    #[default]
    Packets,
    Bytes,
    Connections,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionConfig {
    #[default]
    Drop,
    Mark,
    DryRun,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    pub name: String,
    pub protocol: Protocol,
    /// None: every destination port of the protocol.
    pub port: Option<u16>,
    pub unit: UnitConfig,
    pub limit: u64,
    pub window: Duration,
    pub action: ActionConfig,
    pub dscp: Option<u8>,
}

/// An IPv4 or IPv6 network, `a.b.c.d/len`, `x::/len`, or a bare address (a host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = IpNet::from_str(s) {
            if net.network() != net.addr() {
                return Err(format!(
                    "`{s}` has host bits set; did you mean {}?",
                    net.trunc()
                ));
            }
            return Ok(Cidr(net));
        }
        IpAddr::from_str(s)
            .map(|a| Cidr(IpNet::from(a)))
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A denylist entry; `ttl` makes it expire that long after the rules are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyConfig {
    pub cidr: Cidr,
    pub ttl: Option<Duration>,
}

/// Checks every value and cross-reference; returns all problems as (path, message).
fn validate(raw: RawConfig) -> Result<Config, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| problems.push((path, message));

    let max_sources = match raw.max_sources {
        None => DEFAULT_MAX_SOURCES,
        Some(n) if (1..=MAX_SOURCES_LIMIT as u64).contains(&n) => n as u32,
        Some(_) => {
            problem(
                "max_sources".into(),
                format!("must be between 1 and {MAX_SOURCES_LIMIT}"),
            );
            DEFAULT_MAX_SOURCES
        }
    };

    let max_rules = match raw.max_rules {
        None => Some(DEFAULT_MAX_RULES),
        Some(n) if (2..=MAX_RULES as u64).contains(&n) => Some(n as u32),
        Some(_) => {
            problem(
                "max_rules".into(),
                format!("must be between 2 and {MAX_RULES}"),
            );
            None
        }
    };
    // Counted against the max_rules written; an invalid one has its own problem above.
    if let Some(max_rules) = max_rules.filter(|m| raw.rules.len() >= *m as usize) {
        let hint = if max_rules < MAX_RULES {
            format!(" (raise `max_rules`, up to {MAX_RULES})")
        } else {
            String::new()
        };
        problem(
            "rules".into(),
            format!(
                "{} rules; max_rules {max_rules} has room for {}{hint}",
                raw.rules.len(),
                max_rules - 1
            ),
        );
    }
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    let mut matches = HashSet::new();
    for (i, r) in raw.rules.into_iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].{field}");
        let mut ok = true;
        let mut bad = |path: String, message: String| {
            ok = false;
            problem(path, message)
        };
        if r.name.is_empty() || r.name.len() > 64 {
            bad(at("name"), "must be 1 to 64 characters".into());
        }
        if !names.insert(r.name.clone()) {
            bad(
                at("name"),
                format!("`{}` is used by an earlier rule", r.name),
            );
        }
        if !matches.insert((r.protocol, r.port)) {
            let port = r
                .port
                .map_or("every port".to_string(), |p| format!("port {p}"));
            bad(
                format!("rules[{i}]"),
                format!("an earlier rule already matches {:?} {port}", r.protocol),
            );
        }
        if !(1..=MAX_LIMIT).contains(&r.limit) {
            bad(at("limit"), format!("must be between 1 and {MAX_LIMIT}"));
        }
        let window = match duration::parse(&r.window) {
            Ok(w) if w < MIN_WINDOW || w.as_nanos() > MAX_WINDOW_NS as u128 => {
                bad(
                    at("window"),
                    format!("must be between 1ms and {}s", MAX_WINDOW_NS / 1_000_000_000),
                );
                w
            }
            Ok(w) => w,
            Err(e) => {
                bad(at("window"), e);
                Duration::ZERO
            }
        };
        match r.port {
            Some(0) => bad(
                at("port"),
                "0 is not a port; leave `port` out to match every port".into(),
            ),
            Some(_) if matches!(r.protocol, Protocol::Icmp | Protocol::Icmpv6) => {
                bad(at("port"), "ICMP has no ports; leave `port` out".into())
            }
            _ => {}
        }
        if r.unit == UnitConfig::Connections && r.protocol != Protocol::Tcp {
            bad(
                at("unit"),
                "`connections` counts TCP SYNs and needs protocol `tcp`".into(),
            );
        }
        match (r.action, r.dscp) {
            (ActionConfig::Mark, None) => bad(at("action"), "`mark` needs `dscp` (0 to 63)".into()),
            (ActionConfig::Mark, Some(d)) if d > 63 => bad(at("dscp"), format!("{d} is over 63")),
            (ActionConfig::Drop | ActionConfig::DryRun, Some(_)) => {
                bad(at("dscp"), "only applies to action `mark`".into())
            }
            _ => {}
        }
        if ok {
            rules.push(RuleConfig {
                name: r.name,
                protocol: r.protocol,
                port: r.port,
                unit: r.unit,
                limit: r.limit,
                window,
                action: r.action,
                dscp: r.dscp,
            });
        }
    }

    let mut allow = Vec::new();
    for (i, text) in raw.allow.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(c) => allow.push(c),
            Err(e) => problem(format!("allow[{i}]"), e),
        }
    }
    let mut deny = Vec::new();
    for (i, d) in raw.deny.iter().enumerate() {
        let cidr = match d.cidr.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                problem(format!("deny[{i}].cidr"), e);
                None
            }
        };
        let ttl = match d.ttl.as_deref().map(duration::parse) {
            None => Some(None),
            Some(Ok(t)) if !t.is_zero() && t <= MAX_TTL => Some(Some(t)),
            Some(Ok(_)) => {
                let why = "must be more than 0 and at most 3650d; leave `ttl` out for no expiry";
                problem(format!("deny[{i}].ttl"), why.into());
                None
            }
            Some(Err(e)) => {
                problem(format!("deny[{i}].ttl"), e);
                None
            }
        };
        if let (Some(cidr), Some(ttl)) = (cidr, ttl) {
            deny.push(DenyConfig { cidr, ttl });
        }
    }
    // Allow and deny entries share one trie per family.
    let v4 = allow
        .iter()
        .chain(deny.iter().map(|d| &d.cidr))
        .filter(|c| c.0.addr().is_ipv4())
        .count();
    let v6 = allow.len() + deny.len() - v4;
    if v4.max(v6) > MAX_CIDRS as usize {
        problem(
            "allow".into(),
            format!("{v4} IPv4 and {v6} IPv6 allow + deny entries; at most {MAX_CIDRS} per family"),
        );
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        interface: raw.interface,
        max_sources,
        max_rules: max_rules.unwrap_or(DEFAULT_MAX_RULES),
        rules,
        allow,
        deny,
    })
}

impl Config {
    /// The rules as the `RULES` array takes them, with `id` 0: the data plane hands out ids,
    /// keeping a rule's id as long as its `identity` (name, unit, window) stays.
    pub fn compile_rules(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .map(|r| Rule {
                limit: r.limit,
                window: throttle_common::Window::new(r.window.as_nanos() as u64),
                id: 0,
                identity: rule_identity(&r.name, r.unit, r.window),
                unit: match r.unit {
                    UnitConfig::Packets => Unit::Packets,
                    UnitConfig::Bytes => Unit::Bytes,
                    UnitConfig::Connections => Unit::NewConnections,
                } as u8,
                action: match r.action {
                    ActionConfig::Drop => Action::Drop,
                    ActionConfig::Mark => Action::Mark,
                    ActionConfig::DryRun => Action::DryRun,
                } as u8,
                dscp: r.dscp.unwrap_or(0),
                proto: r.protocol.number(),
                port: r.port.unwrap_or(ANY_PORT),
                _pad: [0; 6],
            })
            .collect()
    }
}

/// A rule's identity across reloads: FNV-1a over its name, unit and window. What it counts
/// and over how long define its windows' meaning; its limit, action or port may change under
/// the same windows.
pub fn rule_identity(name: &str, unit: UnitConfig, window: Duration) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let unit = [unit as u8];
    let window = (window.as_nanos() as u64).to_le_bytes();
    for byte in name.as_bytes().iter().chain(&unit).chain(&window) {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface: eth0
rules:
  - name: https
    protocol: tcp
    port: 443
    unit: connections
    limit: 200
    window: 1s
  - name: api
    protocol: tcp
    port: 8080
    limit: 5000
    window: 1s
    action: mark
    dscp: 8
  - name: any-udp
    protocol: udp
    limit: 1000000
    unit: bytes
    window: 100ms
    action: dry-run
allow: [198.18.100.0/24, "2001:db8:100::/48", 198.18.7.7]
deny:
  - cidr: 198.19.66.0/24
    ttl: 1h
  - cidr: "2001:db8:66::/48"
"#;

    fn error_of(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn good_config_compiles() {
        let c = Config::from_yaml(GOOD).unwrap();
        assert_eq!(c.interface.as_deref(), Some("eth0"));
        assert_eq!(c.max_sources, DEFAULT_MAX_SOURCES);
        let rules = c.compile_rules();
        assert_eq!(rules.len(), 3);
        assert_eq!((rules[0].proto, rules[0].port, rules[0].id), (6, 443, 0));
        assert_ne!(rules[0].identity, rules[1].identity);
        assert_eq!(rules[0].unit, Unit::NewConnections as u8);
        assert_eq!(rules[1].action, Action::Mark as u8);
        assert_eq!(rules[1].dscp, 8);
        assert_eq!((rules[2].port, rules[2].window.ns), (ANY_PORT, 100_000_000));
        assert_eq!(rules[2].action, Action::DryRun as u8);
        assert_eq!(c.allow.len(), 3);
        assert_eq!(c.allow[2].0.prefix_len(), 32);
        assert_eq!(c.deny[0].ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.deny[1].ttl, None);
    }

    fn rules_yaml(header: &str, n: usize) -> String {
        let rules: String = (1..=n)
            .map(|i| {
                format!("  - {{name: r{i}, protocol: udp, port: {i}, limit: 10, window: 1s}}\n")
            })
            .collect();
        format!("{header}rules:\n{rules}")
    }

    #[test]
    fn rule_count_is_bounded_by_max_rules() {
        assert_eq!(
            Config::from_yaml(GOOD).unwrap().max_rules,
            DEFAULT_MAX_RULES
        );
        // The default has room for 1023 rules.
        assert!(Config::from_yaml(&rules_yaml("", 1023)).is_ok());
        let e = error_of(&rules_yaml("", 1024));
        assert!(
            e.contains("rules: 1024 rules; max_rules 1024 has room for 1023 (raise `max_rules`, up to 16384)"),
            "{e}"
        );
        // 10k rules fit once max_rules says so; the largest max_rules holds 16383.
        let c = Config::from_yaml(&rules_yaml("max_rules: 10001\n", 10_000)).unwrap();
        assert_eq!((c.max_rules, c.rules.len()), (10_001, 10_000));
        let e = error_of(&rules_yaml("max_rules: 16384\n", 16_384));
        assert!(
            e.contains("max_rules 16384 has room for 16383") && !e.contains("raise"),
            "{e}"
        );
        for bad in ["0", "1", "16385"] {
            let e = error_of(&format!("max_rules: {bad}\n"));
            assert!(
                e.contains("line 1, max_rules: must be between 2 and 16384"),
                "{bad}: {e}"
            );
        }
        // An invalid max_rules is one problem, not also a rule count against a default.
        let e = error_of(&rules_yaml("max_rules: 20000\n", 1100));
        assert!(e.contains("1 problem(s)") && !e.contains("room for"), "{e}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/throttle.yaml");
        let c = Config::from_file(&path).unwrap();
        assert!(c.rules.len() >= 4);
        assert!(!c.allow.is_empty());
    }

    #[test]
    fn empty_config_is_valid_and_limits_nothing() {
        let c = Config::from_yaml("{}").unwrap();
        assert!(c.rules.is_empty() && c.allow.is_empty() && c.deny.is_empty());
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let e = error_of(
            "rules:\n  - name: a\n    protocol: tcp\n    limit: 1\n    window: 1s\n    burst: 5\n",
        );
        assert!(e.contains("unknown field `burst`"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("rules[0]"), "{e}");
    }

    #[test]
    fn value_errors_name_the_field_and_line() {
        let cases = [
            (
                "limit: 0\n    window: 1s",
                "line 4, rules[0].limit: must be between 1",
            ),
            (
                "limit: 10\n    window: 0s",
                "line 5, rules[0].window: must be between 1ms and",
            ),
            (
                "limit: 10\n    window: 3h",
                "line 5, rules[0].window: must be between 1ms and 8796s",
            ),
            (
                "limit: 10\n    window: soon",
                "line 5, rules[0].window: `soon` is not a duration",
            ),
            (
                "limit: 10\n    window: 1s\n    action: mark",
                "line 6, rules[0].action: `mark` needs `dscp`",
            ),
            (
                "limit: 10\n    window: 1s\n    action: mark\n    dscp: 64",
                "line 7, rules[0].dscp: 64 is over 63",
            ),
            (
                "limit: 10\n    window: 1s\n    dscp: 4",
                "line 6, rules[0].dscp: only applies to action `mark`",
            ),
            (
                "limit: 10\n    window: 1s\n    port: 0",
                "line 6, rules[0].port: 0 is not a port",
            ),
        ];
        for (tail, want) in cases {
            let yaml = format!("rules:\n  - name: r\n    protocol: tcp\n    {tail}\n");
            let e = error_of(&yaml);
            assert!(e.contains(want), "{yaml}\n=> {e}");
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = error_of("max_sources: 0\nrules:\n  - {name: a, protocol: tcp, limit: 0, window: 1s}\nallow: [nope]\n");
        assert!(e.contains("3 problem(s)"), "{e}");
        assert!(e.contains("line 1, max_sources"), "{e}");
        assert!(e.contains("line 3, rules[0].limit"), "{e}");
        assert!(
            e.contains("line 4, allow[0]: `nope` is not an IP address"),
            "{e}"
        );
    }

    #[test]
    fn protocol_mismatches_are_rejected() {
        let e = error_of(
            "rules:\n  - {name: r, protocol: udp, unit: connections, limit: 1, window: 1s}\n",
        );
        assert!(
            e.contains("rules[0].unit: `connections` counts TCP SYNs and needs protocol `tcp`"),
            "{e}"
        );
        let e = error_of("rules:\n  - {name: r, protocol: icmp, port: 1, limit: 1, window: 1s}\n");
        assert!(e.contains("ICMP has no ports"), "{e}");
        let e = error_of("rules:\n  - {name: r, protocol: sctp, limit: 1, window: 1s}\n");
        assert!(
            e.contains("unknown variant `sctp`") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_rejected_with_their_line() {
        let e = error_of(
            "rules:\n  - {name: a, protocol: tcp, port: 80, limit: 1, window: 1s}\n  - {name: b, protocol: tcp, port: 80, limit: 2, window: 1s}\n",
        );
        assert!(
            e.contains("line 3, rules[1]: an earlier rule already matches Tcp port 80"),
            "{e}"
        );
        let e = error_of(
            "rules:\n  - {name: a, protocol: tcp, limit: 1, window: 1s}\n  - {name: a, protocol: udp, limit: 2, window: 1s}\n",
        );
        assert!(
            e.contains("line 3, rules[1].name: `a` is used by an earlier rule"),
            "{e}"
        );
    }

    #[test]
    fn bad_cidrs_are_rejected_with_their_line() {
        let e = error_of("allow:\n  - 198.18.0.0/24\n  - 198.18.0.1/24\n");
        assert!(
            e.contains(
                "line 3, allow[1]: `198.18.0.1/24` has host bits set; did you mean 198.18.0.0/24?"
            ),
            "{e}"
        );
        let e = error_of("deny:\n  - cidr: 300.1.1.1\n");
        assert!(
            e.contains("line 2, deny[0].cidr: `300.1.1.1` is not an IP address or CIDR"),
            "{e}"
        );
        let e = error_of("deny:\n  - cidr: 198.18.0.0/16\n    ttl: forever\n");
        assert!(e.contains("line 3, deny[0].ttl"), "{e}");
        let e = error_of("deny:\n  - cidr: 198.18.0.0/16\n    ttl: 3651d\n");
        assert!(
            e.contains("line 3, deny[0].ttl: must be more than 0 and at most 3650d"),
            "{e}"
        );
    }

    #[test]
    fn broken_yaml_names_the_line() {
        let e = error_of("rules:\n  - name: [unclosed\n");
        assert!(e.contains("line"), "{e}");
    }
}
