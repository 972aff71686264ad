//! Running external commands: each one is echoed before it runs, and a failure names the
//! command line and its exit status.
use std::{
    env,
    ffi::OsStr,
    process::{Command, ExitStatus, Output},
};

use anyhow::{bail, Context, Result};

/// Env vars cargo sets for the xtask process itself (`cargo run`); a nested cargo would take
/// them as its own or pass them on to build scripts and tests.
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_BIN_NAME",
    "CARGO_CRATE_NAME",
];

/// A `cargo` command for a nested build, without the env vars of the outer `cargo run`.
/// Uses the cargo that runs xtask, so both use the same toolchain.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("CARGO_PKG_") || CARGO_RUN_VARS.contains(&&*key_str) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status, whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = display(cmd);
    println!("$ {line}");
    cmd.status().with_context(|| format!("cannot run `{line}`"))
}

/// Runs `cmd` capturing its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let line = display(cmd);
    println!("$ {line}");
    cmd.output().with_context(|| format!("cannot run `{line}`"))
}

/// A shell-like rendering of `cmd`: directory, env vars it sets, program and arguments.
/// An env var extending the current value (PATH) shows as `PREFIX$VAR`.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {} &&", quote(dir.as_os_str())));
    }
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        let (key, value) = (key.to_string_lossy(), value.to_string_lossy());
        let current = env::var(&*key).unwrap_or_default();
        let shown = match value.strip_suffix(current.as_str()) {
            Some(prefix) if !current.is_empty() && !prefix.is_empty() => {
                format!("{}${key}", quote(OsStr::new(prefix)))
            }
            _ => quote(OsStr::new(&*value)),
        };
        parts.push(format!("{key}={shown}"));
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "a b", "it's"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(
            display(&cmd),
            r"DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b' 'it'\''s'"
        );
    }
}
