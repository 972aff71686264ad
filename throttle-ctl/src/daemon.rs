//! `throttle-ctl run`: the daemon.
use std::process::ExitCode;

/// Options of `throttle-ctl run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> ExitCode {
    ExitCode::from(1)
}
