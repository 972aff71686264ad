//! The contract between the running daemon and everything that talks to it: the admin API
//! (server side), the `throttle-ctl` verbs (client side) and the metrics. The daemon
//! implements [`Control`]; the admin API serves it under the [`routes`] below; the CLI parses
//! the same JSON types back.

use serde::{Deserialize, Serialize};

/// Paths of the admin API. `docs/api/openapi.yaml` documents exactly these.
pub mod routes {
    pub const HEALTH: &str = "/healthz";
    pub const READY: &str = "/readyz";
    pub const STATUS: &str = "/v1/status";
    pub const RULES: &str = "/v1/rules";
    /// `?by=drops|rate&limit=N`
    pub const TOP: &str = "/v1/top";
    pub const STATS: &str = "/v1/stats";
    /// GET lists; POST adds (`AclRequest`).
    pub const ACL: &str = "/v1/acl";
    /// DELETE `/v1/acl/{list}/{cidr}` (the CIDR with `/` written as `_`, e.g. `198.18.0.0_24`).
    pub const ACL_ENTRY: &str = "/v1/acl/{list}/{cidr}";
    /// POST: re-read the config file and apply it.
    pub const RELOAD: &str = "/v1/reload";
    /// POST: detach the program, remove the pins, and exit the daemon.
    pub const DETACH: &str = "/v1/detach";
    pub const METRICS: &str = "/metrics";
    pub const OPENAPI: &str = "/openapi.json";
}

/// `GET /v1/status`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub iface: String,
    /// `driver` or `skb`.
    pub attach_mode: String,
    /// Kernel id of the running XDP program.
    pub program_id: u32,
    /// Generation of the applied rule set (1 for the first apply, +1 per reload).
    pub generation: u64,
    pub uptime_seconds: u64,
    /// True when this daemon took over pinned maps and link from an earlier one.
    pub adopted: bool,
    /// Where maps and link are pinned; None when not pinned.
    pub pin_dir: Option<String>,
    pub config_path: String,
    pub maps: Vec<MapOccupancy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOccupancy {
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

/// Counters of one rule, or of everything (`Stats::global`), summed over CPUs: the map's own
/// layout, serialized field by field.
pub use throttle_common::Counters as CounterView;

/// `GET /v1/rules`: one entry per rule of the applied set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: u32,
    pub name: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`.
    pub protocol: String,
    /// None: every port.
    pub port: Option<u16>,
    /// `packets`, `bytes`, `connections`.
    pub unit: String,
    pub limit: u64,
    pub window_seconds: f64,
    /// `drop`, `mark`, `dry-run`.
    pub action: String,
    pub dscp: Option<u8>,
    pub counters: CounterView,
}

/// Order of `GET /v1/top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TopOrder {
    /// Most refused units first.
    #[default]
    Drops,
    /// Highest admitted rate first.
    Rate,
}

/// `GET /v1/top`: one tracked (source, rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopEntry {
    pub source: String,
    pub rule: String,
    /// Units admitted per second over the current sliding window (estimate).
    pub admitted_per_second: f64,
    /// Units refused (dropped, marked or dry-run) since the source was first tracked.
    pub refused: u64,
}

/// Which access list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AclList {
    Allow,
    Deny,
}

impl AclList {
    pub fn as_str(self) -> &'static str {
        match self {
            AclList::Allow => "allow",
            AclList::Deny => "deny",
        }
    }
}

/// Where an access-list entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclOrigin {
    /// The config file: replaced by every reload.
    Config,
    /// The admin API (`throttle-ctl block` / `allow`): kept across reloads and restarts.
    Api,
}

/// `GET /v1/acl` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntryView {
    pub list: AclList,
    pub cidr: String,
    /// Seconds left before a deny entry expires; None = never.
    pub expires_in_seconds: Option<u64>,
    pub origin: AclOrigin,
}

/// `POST /v1/acl` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRequest {
    pub list: AclList,
    /// An address or CIDR, IPv4 or IPv6.
    pub cidr: String,
    /// Deny entries only: seconds until the entry expires (1 to 315360000). None = never.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `GET /v1/stats`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub generation: u64,
    /// Everything the program counted, all rules (current and removed) together.
    pub global: CounterView,
    pub rules: Vec<RuleView>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// Over-quota events read from the kernel's ring buffer.
    pub over_quota_events: u64,
}

/// `POST /v1/reload` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub rules: usize,
}

/// Why a control request failed; the admin API turns it into an RFC 9457 problem.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request itself is wrong (400): bad CIDR, TTL out of range, unknown list.
    #[error("{0}")]
    BadRequest(String),
    /// The config file (reload) is invalid (422); the running rules stay.
    #[error("{detail}")]
    InvalidConfig {
        detail: String,
        problems: Vec<String>,
    },
    /// Nothing there to act on (404).
    #[error("{0}")]
    NotFound(String),
    /// The daemon could not do it (500): map access, kernel errors.
    #[error("{0}")]
    Internal(String),
}

/// What the running daemon offers. Calls are short (map reads and writes); the admin API may
/// call them from its async handlers through `spawn_blocking`.
pub trait Control: Send + Sync + 'static {
    /// True once the program is attached and the first rule set applied.
    fn ready(&self) -> bool;
    fn status(&self) -> Result<Status, ControlError>;
    fn rules(&self) -> Result<Vec<RuleView>, ControlError>;
    fn top(&self, order: TopOrder, limit: usize) -> Result<Vec<TopEntry>, ControlError>;
    fn stats(&self) -> Result<Stats, ControlError>;
    fn acl(&self) -> Result<Vec<AclEntryView>, ControlError>;
    fn acl_add(&self, request: AclRequest) -> Result<AclEntryView, ControlError>;
    /// Removes an entry the API added; config entries change only through the config file.
    fn acl_remove(&self, list: AclList, cidr: &str) -> Result<(), ControlError>;
    fn reload(&self) -> Result<ReloadOutcome, ControlError>;
    /// Detaches the program and removes the pins; the daemon exits once the answer is sent.
    fn detach(&self) -> Result<(), ControlError>;
}
