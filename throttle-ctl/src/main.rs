//! `throttle-ctl`: runs the throttle data plane and checks configs.
//!
//! Exit codes: 0 success; 1 runtime failure (load, attach, map access); 2 invalid config or usage.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use throttle_ctl::{
    config::{Config, ConfigError},
    dataplane::{AttachMode, Dataplane, LoadOptions},
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "throttle-ctl",
    version,
    about = "Host-level API protection: XDP rate limiting per source"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it, apply the config, and enforce until SIGINT/SIGTERM.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/throttle/throttle.yaml")]
        config: PathBuf,
        /// Interface to protect (overrides `interface:` in the config).
        #[arg(long)]
        iface: Option<String>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Log counters this often (0 = only at exit).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        stats_interval: Duration,
    },
    /// Validate configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file: prints every problem with its line, exits 2 if there is any.
    Check { file: PathBuf },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    throttle_ctl::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::from_file(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} rules, {} allow, {} deny entries)",
                    file.display(),
                    c.rules.len(),
                    c.allow.len(),
                    c.deny.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            iface,
            mode,
            stats_interval,
        } => {
            let config = match Config::from_file(&config) {
                Ok(c) => c,
                Err(
                    e @ (ConfigError::Syntax { .. }
                    | ConfigError::Invalid { .. }
                    | ConfigError::Read { .. }),
                ) => {
                    error!(category = "config", "{e}");
                    return ExitCode::from(2);
                }
            };
            let Some(iface) = iface.or(config.interface.clone()) else {
                error!(
                    category = "usage",
                    "no interface: pass --iface or set `interface:` in the config"
                );
                return ExitCode::from(2);
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = runtime
                .context("starting the runtime")
                .and_then(|rt| rt.block_on(run(config, &iface, mode, stats_interval)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(category = "dataplane", "{e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn run(
    config: Config,
    iface: &str,
    mode: AttachMode,
    stats_interval: Duration,
) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load(LoadOptions {
        max_sources: config.max_sources,
        test_clock: false,
    })
    .context("loading the XDP program")?;
    let generation = dataplane.apply(&config).context("writing the rules")?;
    let used = dataplane.attach(iface, mode)?;
    info!(iface, mode = ?used, generation, "enforcing");

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let period = if stats_interval.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        stats_interval
    };
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            // A failed read is logged, never fatal: returning would detach the program.
            _ = ticker.tick() => if let Err(e) = log_counters(&dataplane, &config) {
                warn!(category = "dataplane", "reading counters: {e:#}");
            },
        }
    }
    if let Err(e) = log_counters(&dataplane, &config) {
        warn!(category = "dataplane", "reading counters: {e:#}");
    }
    info!(iface, "detaching and exiting");
    drop(dataplane);
    Ok(())
}

fn log_counters(dataplane: &Dataplane, config: &Config) -> anyhow::Result<()> {
    let counters = dataplane.counters(config.rules.len() as u32)?;
    for (id, c) in counters.iter().enumerate() {
        let rule = if id == 0 {
            "(no rule)"
        } else {
            config.rules[id - 1].name.as_str()
        };
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
    Ok(())
}

/// JSON logs for the daemon (journald, collectors); human ones on a terminal.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("THROTTLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}
