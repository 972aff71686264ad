//! `throttle-ctl`: the throttle daemon (`run`) and the verbs that drive it through its admin
//! API.
//!
//! Exit codes: 0 success; 1 failure (the daemon or the kernel refused, or a runtime error);
//! 2 invalid input or config (nothing changed); 3 the daemon is not running or not reachable.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use throttle_ctl::{
    cli::{self, ClientOptions, Verb},
    config::Config,
    daemon::{self, RunArgs},
};

#[derive(Parser)]
#[command(
    name = "throttle-ctl",
    version,
    about = "Host-level API protection: XDP rate limiting per source"
)]
struct Cli {
    #[command(flatten)]
    client: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load (or adopt) the XDP program, apply the config, serve the admin API.
    Run(RunArgs),
    /// Validate configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Verb(Verb),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file: prints every problem with its line, exits 2 if there is any.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging();
            daemon::main(args)
        }
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
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "throttle-ctl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Verb(verb) => cli::run(&cli.client, verb),
    }
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
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}
