//! `throttle-ctl run`: the daemon. It loads (or takes over) the pinned XDP program, applies the
//! config, serves the admin API and metrics, reads over-quota events, reloads on SIGHUP, and on
//! SIGTERM/SIGINT exits leaving the program enforcing (unless told to detach).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::programs::XdpMode;
use throttle_common::{
    names, window::estimate, Counters, OverQuotaEvent, ACL_ALLOW, ACL_DENY, MAX_CIDRS, ORIGIN_API,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::Notify,
};
use tracing::{error, info, info_span, warn};

use crate::{
    admin,
    config::{Cidr, Config, ConfigError},
    control::{
        AclEntryView, AclList, AclOrigin, AclRequest, Control, ControlError, MapOccupancy,
        ReloadOutcome, RuleView, Stats, Status, TopEntry, TopOrder,
    },
    dataplane::{AttachMode, Dataplane, LoadOptions, RuntimeAcl},
    metrics::Metrics,
};

/// Options of `throttle-ctl run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Configuration file (reloaded on SIGHUP and `throttle-ctl reload`).
    #[arg(long, short, default_value = "/etc/throttle/throttle.yaml")]
    pub config: PathBuf,
    /// Interface to protect (overrides `interface:` in the config).
    #[arg(long)]
    pub iface: Option<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,
    /// Where maps and link are pinned (a bpf filesystem): enforcement and state outlive the
    /// daemon, and a restarted daemon takes them over.
    #[arg(long, default_value = "/sys/fs/bpf/throttle")]
    pub pin_dir: PathBuf,
    /// Pin nothing: enforcement stops when the daemon stops.
    #[arg(long)]
    pub no_pin: bool,
    /// Admin API unix socket (mode 0600).
    #[arg(long, default_value = "/run/throttle/admin.sock")]
    pub socket: PathBuf,
    /// Also serve the admin API on TCP at this address (requires --token-file).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token of the TCP admin API.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Log counters this often (0 = never).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub stats_interval: Duration,
    /// On SIGTERM/SIGINT, detach the program and remove the pins instead of leaving it
    /// enforcing.
    #[arg(long)]
    pub detach_on_exit: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    crate::duration::parse(s)
}

/// Exit codes as documented in main.rs.
pub fn main(args: RunArgs) -> ExitCode {
    if args.listen.is_some() && args.token_file.is_none() {
        error!(
            category = "usage",
            "--listen needs --token-file: the TCP admin API never runs without a token"
        );
        return ExitCode::from(2);
    }
    let config = match Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            error!(category = "config", "{e}");
            return ExitCode::from(2);
        }
    };
    let Some(iface) = args.iface.clone().or(config.interface.clone()) else {
        error!(
            category = "usage",
            "no interface: pass --iface or set `interface:` in the config"
        );
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(args, config, iface)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(category = "dataplane", "{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs, config: Config, iface: String) -> anyhow::Result<()> {
    // Signals first: a SIGHUP during the (slow) load must not kill the process.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    // Listeners before the data plane: a second daemon (socket in use) stops here, before it
    // touches the pins of the first.
    let unix = admin::bind_unix(&args.socket)?;
    let tcp = match args.listen {
        Some(addr) => Some(admin::bind_tcp(addr).await?),
        None => None,
    };

    let pin_dir = (!args.no_pin).then(|| args.pin_dir.clone());
    let mut dataplane = Dataplane::load(LoadOptions {
        max_sources: config.max_sources,
        max_rules: config.max_rules,
        test_clock: false,
        pin_dir: pin_dir.clone(),
    })
    .context("loading the XDP program")?;
    // API entries of an earlier daemon live on in the pinned tries.
    let runtime_acl = read_runtime_acl(&dataplane)?;
    let applied = dataplane
        .apply(&config, &runtime_acl)
        .context("writing the rules")?;
    let mode = dataplane.attach(&iface, args.mode)?;
    let events = dataplane.take_events()?;
    let adopted = dataplane.adopted();

    let daemon = Arc::new(Daemon {
        dataplane: Mutex::new(Some(dataplane)),
        state: Mutex::new(State {
            config,
            rule_ids: applied.ids,
            runtime_acl,
        }),
        config_path: args.config.clone(),
        iface: iface.clone(),
        mode,
        adopted,
        pin_dir,
        started: Instant::now(),
        ready: AtomicBool::new(false),
        reloads_succeeded: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        events: AtomicU64::new(0),
        stop: Notify::new(),
        occupancy: Mutex::new(None),
    });

    let metrics = Arc::new(Metrics::new());
    let router = admin::router(daemon.clone(), metrics);
    // A watch, not a Notify: a shutdown signalled before a server first polls is not lost.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut servers = vec![tokio::spawn(admin::serve_unix_listener(
        unix,
        router.clone(),
        shutdown(),
    ))];
    if let (Some(listener), Some(token)) = (tcp, token) {
        servers.push(tokio::spawn(admin::serve_tcp_listener(
            listener,
            token,
            router.clone(),
            shutdown(),
        )));
    }
    tokio::spawn(read_events(daemon.clone(), events));
    daemon.ready.store(true, Ordering::SeqCst);
    info!(iface, mode = ?mode, generation = applied.generation, adopted, "enforcing");

    let period = if args.stats_interval.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        args.stats_interval
    };
    let mut stats = tokio::time::interval(period);
    stats.tick().await;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = daemon.stop.notified() => break,
            _ = sighup.recv() => {
                let d = daemon.clone();
                match tokio::task::spawn_blocking(move || d.reload()).await? {
                    Ok(outcome) => info!(generation = outcome.generation, "reloaded on SIGHUP"),
                    Err(e) => warn!(category = "config", "reload on SIGHUP rejected, the running rules stay: {e}"),
                }
            }
            _ = stats.tick() => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || d.log_counters()).await?;
            }
            _ = housekeeping.tick() => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || d.expire_acl()).await?;
            }
        }
    }

    daemon.ready.store(false, Ordering::SeqCst);
    // Detach (when asked) before draining connections: a stalled client must not hold it up.
    let dataplane = daemon
        .dataplane
        .lock()
        .map_err(|_| anyhow::anyhow!("dataplane lock poisoned"))?
        .take();
    if let Some(dataplane) = dataplane {
        if args.detach_on_exit || daemon.pin_dir.is_none() {
            dataplane.detach()?;
            info!(iface, "detached: enforcement stopped");
        } else {
            drop(dataplane);
            info!(iface, pin_dir = ?daemon.pin_dir, "exiting; the pinned program keeps enforcing");
        }
    }
    let _ = shutdown_tx.send(true);
    for server in servers {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(e))) => warn!(category = "admin", "admin API: {e:#}"),
            Ok(Err(e)) => warn!(category = "admin", "admin API task: {e}"),
            Err(_) => warn!(
                category = "admin",
                "admin API connections still open after 5 s; closing them"
            ),
            Ok(Ok(Ok(()))) => {}
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Reads the TCP admin token; refuses a file others can read (the token is full admin access).
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the token file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    Ok(token.trim().to_string())
}

/// What reloads and API calls change.
struct State {
    config: Config,
    /// Rule id of each config rule, in config order.
    rule_ids: Vec<u32>,
    runtime_acl: Vec<RuntimeAcl>,
}

struct Daemon {
    /// None once shutting down.
    dataplane: Mutex<Option<Dataplane>>,
    state: Mutex<State>,
    config_path: PathBuf,
    iface: String,
    mode: XdpMode,
    adopted: bool,
    pin_dir: Option<PathBuf>,
    started: Instant,
    ready: AtomicBool,
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    events: AtomicU64,
    /// Wakes the main loop to exit (after a detach through the API).
    stop: Notify,
    /// Map occupancy: when, how long the walk took, what it found. A large source table
    /// takes a while to walk, so a slow walk is reused for a few seconds.
    occupancy: Mutex<Option<(Instant, Duration, Vec<MapOccupancy>)>>,
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(e.to_string())
}

impl Daemon {
    fn with_dataplane<T>(
        &self,
        f: impl FnOnce(&mut Dataplane) -> Result<T, crate::dataplane::DataplaneError>,
    ) -> Result<T, ControlError> {
        let mut guard = self.dataplane.lock().map_err(internal)?;
        let dp = guard
            .as_mut()
            .ok_or_else(|| ControlError::Internal("shutting down".into()))?;
        f(dp).map_err(|e| {
            error!(category = "dataplane", "{e}");
            internal(e)
        })
    }

    fn log_counters(&self) {
        match self.stats() {
            Ok(stats) => {
                for rule in &stats.rules {
                    log_counter_line(&rule.name, &rule.counters);
                }
                log_counter_line("(all)", &stats.global);
            }
            Err(e) => warn!(category = "dataplane", "reading counters: {e}"),
        }
    }

    /// Drops expired API entries and rewrites the list when any deny entry expired.
    fn expire_acl(&self) {
        let result = (|| {
            let mut state = self.state.lock().map_err(internal)?;
            let now = self.with_dataplane(|dp| dp.now())?;
            let expired = self
                .with_dataplane(|dp| dp.acl_entries())?
                .iter()
                .any(|(_, e)| e.kind == ACL_DENY && e.expires_ns != 0 && e.expires_ns <= now);
            if expired {
                state
                    .runtime_acl
                    .retain(|r| r.expires_ns == 0 || r.expires_ns > now);
                let (config, runtime) = (state.config.clone(), state.runtime_acl.clone());
                let count = self.with_dataplane(|dp| dp.apply_access_list(&config, &runtime))?;
                info!(entries = count, "expired deny entries removed");
            }
            Ok::<(), ControlError>(())
        })();
        if let Err(e) = result {
            warn!(category = "dataplane", "expiring deny entries: {e}");
        }
    }

    fn rule_views(&self, state: &State, counters: &[Counters]) -> Vec<RuleView> {
        state
            .config
            .rules
            .iter()
            .zip(&state.rule_ids)
            .map(|(r, id)| RuleView {
                id: *id,
                name: r.name.clone(),
                protocol: format!("{:?}", r.protocol).to_lowercase(),
                port: r.port,
                unit: format!("{:?}", r.unit).to_lowercase(),
                limit: r.limit,
                window_seconds: r.window.as_secs_f64(),
                action: match r.action {
                    crate::config::ActionConfig::Drop => "drop",
                    crate::config::ActionConfig::Mark => "mark",
                    crate::config::ActionConfig::DryRun => "dry-run",
                }
                .into(),
                dscp: r.dscp,
                counters: counters.get(*id as usize).copied().unwrap_or_default(),
            })
            .collect()
    }
}

/// One log line with every counter of a rule (or of all rules).
fn log_counter_line(rule: &str, c: &Counters) {
    info!(
        rule,
        passed = c.passed,
        dropped = c.dropped,
        marked = c.marked,
        dry_run = c.dry_run,
        bytes_passed = c.bytes_passed,
        bytes_dropped = c.bytes_dropped,
        malformed = c.malformed,
        non_ip = c.non_ip,
        allowlisted = c.allowlisted,
        denylisted = c.denylisted,
        evasive = c.evasive,
        new_sources = c.new_sources,
        "counters"
    );
}

fn read_runtime_acl(dp: &Dataplane) -> anyhow::Result<Vec<RuntimeAcl>> {
    Ok(dp
        .acl_entries()?
        .into_iter()
        .filter(|(_, e)| e.origin == ORIGIN_API)
        .map(|(cidr, e)| RuntimeAcl {
            cidr,
            kind: e.kind,
            expires_ns: e.expires_ns,
        })
        .collect())
}

fn source_string(addr: [u8; 16]) -> String {
    IpAddr::from(addr).to_canonical().to_string()
}

impl Control for Daemon {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn status(&self) -> Result<Status, ControlError> {
        let (generation, program_id) =
            self.with_dataplane(|dp| Ok((dp.settings()?.generation, dp.program_id()?)))?;
        let maps = {
            let mut cache = self.occupancy.lock().map_err(internal)?;
            match cache.as_ref() {
                // Reused only when walking was slow (a large source table) and recent.
                Some((at, took, maps))
                    if *took > Duration::from_millis(100)
                        && at.elapsed() < Duration::from_secs(5) =>
                {
                    maps.clone()
                }
                _ => {
                    let started = Instant::now();
                    let rules = self.state.lock().map_err(internal)?.config.rules.len() as u64;
                    let maps = self.with_dataplane(|dp| {
                        let walked = |name: &'static str,
                                          label: &str,
                                          max: u64|
                             -> Result<
                                MapOccupancy,
                                crate::dataplane::DataplaneError,
                            > {
                                Ok(MapOccupancy {
                                    name: label.into(),
                                    entries: dp.count_entries(name)?,
                                    max_entries: max,
                                })
                            };
                        let sources = dp.map_info(names::SOURCES)?.max_entries() as u64;
                        Ok(vec![
                            walked(names::SOURCES, "sources", sources)?,
                            MapOccupancy {
                                name: "rules".into(),
                                entries: rules,
                                max_entries: dp.max_rules() as u64 - 1,
                            },
                            walked(names::ACL_V4, "acl_v4", MAX_CIDRS as u64)?,
                            walked(names::ACL_V6, "acl_v6", MAX_CIDRS as u64)?,
                        ])
                    })?;
                    *cache = Some((Instant::now(), started.elapsed(), maps.clone()));
                    maps
                }
            }
        };
        Ok(Status {
            iface: self.iface.clone(),
            attach_mode: if self.mode == XdpMode::Skb {
                "skb"
            } else {
                "driver"
            }
            .into(),
            program_id,
            generation,
            uptime_seconds: self.started.elapsed().as_secs(),
            adopted: self.adopted,
            pin_dir: self.pin_dir.as_ref().map(|p| p.display().to_string()),
            config_path: self.config_path.display().to_string(),
            maps,
        })
    }

    fn rules(&self) -> Result<Vec<RuleView>, ControlError> {
        let counters = self.with_dataplane(|dp| dp.counters(dp.max_rules() - 1))?;
        let state = self.state.lock().map_err(internal)?;
        Ok(self.rule_views(&state, &counters))
    }

    fn top(&self, order: TopOrder, limit: usize) -> Result<Vec<TopEntry>, ControlError> {
        // Bounded walk: a full table of millions of sources would take seconds.
        let (sources, now, rules) =
            self.with_dataplane(|dp| Ok((dp.sources(1 << 20)?, dp.now()?, dp.active_rules()?)))?;
        let state = self.state.lock().map_err(internal)?;
        let name_of = |id: u32| {
            state
                .rule_ids
                .iter()
                .position(|i| *i == id)
                .map(|p| state.config.rules[p].name.clone())
        };
        let mut entries: Vec<TopEntry> = sources
            .into_iter()
            .filter_map(|(key, s)| {
                let rule = rules.iter().find(|r| r.id == key.rule_id)?;
                let elapsed = now.saturating_sub(s.start_ns);
                let used = estimate(s.prev, s.curr, elapsed, rule.window);
                Some(TopEntry {
                    source: source_string(key.addr),
                    rule: name_of(key.rule_id)?,
                    admitted_per_second: used as f64 / (rule.window.ns as f64 / 1e9),
                    refused: s.refused,
                })
            })
            .collect();
        match order {
            TopOrder::Drops => entries.sort_by_key(|e| std::cmp::Reverse(e.refused)),
            TopOrder::Rate => {
                entries.sort_by(|a, b| b.admitted_per_second.total_cmp(&a.admitted_per_second))
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }

    fn stats(&self) -> Result<Stats, ControlError> {
        let (counters, generation) = self.with_dataplane(|dp| {
            Ok((dp.counters(dp.max_rules() - 1)?, dp.settings()?.generation))
        })?;
        let mut global = Counters::default();
        counters.iter().for_each(|c| global.add(c));
        let state = self.state.lock().map_err(internal)?;
        Ok(Stats {
            generation,
            global,
            rules: self.rule_views(&state, &counters),
            reloads_succeeded: self.reloads_succeeded.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            over_quota_events: self.events.load(Ordering::Relaxed),
        })
    }

    fn acl(&self) -> Result<Vec<AclEntryView>, ControlError> {
        let (entries, now) = self.with_dataplane(|dp| Ok((dp.acl_entries()?, dp.now()?)))?;
        let mut views: Vec<AclEntryView> = entries
            .into_iter()
            .map(|(cidr, e)| AclEntryView {
                list: if e.kind == ACL_ALLOW {
                    AclList::Allow
                } else {
                    AclList::Deny
                },
                cidr: cidr.to_string(),
                expires_in_seconds: (e.expires_ns != 0)
                    .then(|| e.expires_ns.saturating_sub(now) / 1_000_000_000),
                origin: if e.origin == ORIGIN_API {
                    AclOrigin::Api
                } else {
                    AclOrigin::Config
                },
            })
            .collect();
        views.sort_by(|a, b| (a.list.as_str(), &a.cidr).cmp(&(b.list.as_str(), &b.cidr)));
        Ok(views)
    }

    fn acl_add(&self, request: AclRequest) -> Result<AclEntryView, ControlError> {
        let cidr: Cidr = request.cidr.parse().map_err(ControlError::BadRequest)?;
        let kind = match request.list {
            AclList::Allow if request.ttl_seconds.is_some() => {
                return Err(ControlError::BadRequest(
                    "ttl_seconds applies to deny entries only".into(),
                ))
            }
            AclList::Allow => ACL_ALLOW,
            AclList::Deny => ACL_DENY,
        };
        let ttl = match request.ttl_seconds {
            Some(t) if !(1..=315_360_000).contains(&t) => {
                return Err(ControlError::BadRequest(
                    "ttl_seconds must be between 1 and 315360000".into(),
                ))
            }
            t => t,
        };
        let mut state = self.state.lock().map_err(internal)?;
        let now = self.with_dataplane(|dp| dp.now())?;
        let expires_ns = ttl.map_or(0, |t| now.saturating_add(t * 1_000_000_000));
        if kind == ACL_DENY {
            // Allow wins: such an entry would do nothing, and would be gone after a restart.
            let mut allows = state.config.allow.iter().copied().chain(
                state
                    .runtime_acl
                    .iter()
                    .filter(|r| r.kind == ACL_ALLOW)
                    .map(|r| r.cidr),
            );
            if let Some(allow) = allows.find(|a| a.0.contains(&cidr.0)) {
                return Err(ControlError::BadRequest(format!(
                    "{cidr} lies inside the allow entry {allow}, which wins; remove that first"
                )));
            }
        }
        let mut runtime = state.runtime_acl.clone();
        runtime.retain(|r| r.cidr != cidr);
        runtime.push(RuntimeAcl {
            cidr,
            kind,
            expires_ns,
        });
        let family = |c: &Cidr| c.0.addr().is_ipv4();
        let same_family = state
            .config
            .allow
            .iter()
            .filter(|c| family(c) == family(&cidr))
            .count()
            + state
                .config
                .deny
                .iter()
                .filter(|d| family(&d.cidr) == family(&cidr))
                .count()
            + runtime
                .iter()
                .filter(|r| family(&r.cidr) == family(&cidr))
                .count();
        if same_family > MAX_CIDRS as usize {
            return Err(ControlError::BadRequest(format!(
                "the access list is full ({MAX_CIDRS} entries per family)"
            )));
        }
        let config = state.config.clone();
        self.with_dataplane(|dp| dp.apply_access_list(&config, &runtime))?;
        state.runtime_acl = runtime;
        info!(list = request.list.as_str(), cidr = %cidr, ttl_seconds = ?ttl, "access-list entry added");
        Ok(AclEntryView {
            list: request.list,
            cidr: cidr.to_string(),
            expires_in_seconds: ttl,
            origin: AclOrigin::Api,
        })
    }

    fn acl_remove(&self, list: AclList, cidr: &str) -> Result<(), ControlError> {
        let cidr: Cidr = cidr.parse().map_err(ControlError::BadRequest)?;
        let kind = if list == AclList::Allow {
            ACL_ALLOW
        } else {
            ACL_DENY
        };
        let mut state = self.state.lock().map_err(internal)?;
        let Some(pos) = state
            .runtime_acl
            .iter()
            .position(|r| r.cidr == cidr && r.kind == kind)
        else {
            let in_config = match list {
                AclList::Allow => state.config.allow.contains(&cidr),
                AclList::Deny => state.config.deny.iter().any(|d| d.cidr == cidr),
            };
            return Err(if in_config {
                ControlError::BadRequest(format!(
                    "{cidr} comes from the config file; remove it there and reload"
                ))
            } else {
                ControlError::NotFound(format!("{cidr} is not on the {} list", list.as_str()))
            });
        };
        let mut runtime = state.runtime_acl.clone();
        runtime.remove(pos);
        let config = state.config.clone();
        self.with_dataplane(|dp| dp.apply_access_list(&config, &runtime))?;
        state.runtime_acl = runtime;
        info!(list = list.as_str(), cidr = %cidr, "access-list entry removed");
        Ok(())
    }

    fn reload(&self) -> Result<ReloadOutcome, ControlError> {
        let span = info_span!("reload", config = %self.config_path.display());
        let _enter = span.enter();
        let config = match Config::from_file(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    category = "config",
                    "reload rejected, the running rules stay: {e}"
                );
                let problems = match &e {
                    ConfigError::Invalid { problems, .. } => {
                        problems.iter().map(|p| p.to_string()).collect()
                    }
                    _ => vec![e.to_string()],
                };
                return Err(ControlError::InvalidConfig {
                    detail: e.to_string(),
                    problems,
                });
            }
        };
        if config.interface.as_deref().is_some_and(|i| i != self.iface) {
            warn!(
                category = "config",
                "the config names another interface; changing interfaces needs a restart"
            );
        }
        let loaded = self.with_dataplane(|dp| Ok(dp.max_rules()))?;
        if config.max_rules != loaded {
            warn!(
                category = "config",
                configured = config.max_rules,
                loaded,
                "max_rules is fixed when the program is loaded; the running program keeps its own"
            );
        }
        let mut state = self.state.lock().map_err(internal)?;
        let runtime = state.runtime_acl.clone();
        let applied = match self.with_dataplane(|dp| Ok(dp.apply(&config, &runtime)))? {
            Ok(applied) => applied,
            // More rules than the loaded program has ids for: the config is what is wrong, so
            // it is refused like any invalid one; the running rules stay.
            Err(e @ crate::dataplane::DataplaneError::TooManyRules { .. }) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    category = "config",
                    "reload rejected, the running rules stay: {e}"
                );
                return Err(ControlError::InvalidConfig {
                    detail: format!("{}: 1 problem(s)", self.config_path.display()),
                    problems: vec![format!("rules: {e}")],
                });
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                error!(category = "dataplane", "{e}");
                return Err(internal(e));
            }
        };
        let rules = config.rules.len();
        state.config = config;
        state.rule_ids = applied.ids;
        self.reloads_succeeded.fetch_add(1, Ordering::Relaxed);
        info!(generation = applied.generation, rules, "reloaded");
        Ok(ReloadOutcome {
            generation: applied.generation,
            rules,
        })
    }

    fn detach(&self) -> Result<(), ControlError> {
        info!("detach requested through the admin API");
        // Done before answering, so "detached" means detached; the daemon then exits.
        let dataplane = self.dataplane.lock().map_err(internal)?.take();
        let dataplane =
            dataplane.ok_or_else(|| ControlError::Internal("already shutting down".into()))?;
        dataplane.detach().map_err(internal)?;
        info!(iface = self.iface, "detached: enforcement stopped");
        self.stop.notify_one();
        Ok(())
    }
}

/// Over-quota events logged one by one per second, at most.
const EVENT_LOG_LINES_PER_SECOND: u32 = 20;

/// Logs and counts over-quota events from the kernel's ring buffer.
async fn read_events(daemon: Arc<Daemon>, events: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring buffer owns its map fd and keeps it open while the AsyncFd holds it.
    let mut fd =
        match unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!(category = "dataplane", "over-quota events unavailable: {e}");
                return;
            }
        };
    // Logged one by one up to a budget per second; beyond it (an attack from many sources)
    // counted and summed up once a second, so the log stays readable and journald's rate
    // limit does not swallow other messages.
    let (mut second, mut logged, mut suppressed) = (Instant::now(), 0u32, 0u64);
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(category = "dataplane", "over-quota events: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<OverQuotaEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote an OverQuotaEvent (plain integers) of at least this size.
            let event: OverQuotaEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            daemon.events.fetch_add(1, Ordering::Relaxed);
            if second.elapsed() >= Duration::from_secs(1) {
                if suppressed > 0 {
                    info!(
                        events = suppressed,
                        "over quota: more sources in the last second (see `throttle-ctl top`)"
                    );
                }
                (second, logged, suppressed) = (Instant::now(), 0, 0);
            }
            if logged >= EVENT_LOG_LINES_PER_SECOND {
                suppressed += 1;
                continue;
            }
            logged += 1;
            let rule = daemon.state.lock().ok().and_then(|s| {
                s.rule_ids
                    .iter()
                    .position(|id| *id == event.rule_id)
                    .map(|p| s.config.rules[p].name.clone())
            });
            info!(
                source = source_string(event.addr),
                rule = rule.as_deref().unwrap_or("(removed)"),
                refused = event.refused,
                "over quota"
            );
        }
        guard.clear_ready();
    }
}
