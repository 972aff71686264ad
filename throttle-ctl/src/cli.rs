//! The `throttle-ctl` verbs: clients of the daemon's admin API.
//!
//! Every read verb prints a human table by default and JSON with `--json`. Exit codes: 0
//! success; 1 the daemon refused or failed; 2 invalid input (HTTP 4xx: nothing changed);
//! 3 the daemon is not running or not reachable.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use crate::control::{AclList, TopOrder};

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

/// Runs one verb against the daemon.
pub fn run(client: &ClientOptions, verb: Verb) -> ExitCode {
    let _ = (client, verb, AclList::Allow);
    eprintln!("throttle-ctl: this verb is being implemented");
    ExitCode::from(1)
}
