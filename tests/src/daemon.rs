//! The real `throttle-ctl run` in a lab's receiver namespace, and the CLI pointed at it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::Lab;

/// The throttle-ctl binary built by `cargo xtask build` (or THROTTLE_CTL_BIN).
pub fn throttle_ctl() -> PathBuf {
    let path = std::env::var_os("THROTTLE_CTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/throttle-ctl")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build` first",
        path.display()
    );
    path
}

/// A running daemon: its pid, files, and a CLI bound to its socket.
pub struct Daemon {
    pub pid: u32,
    /// Working directory: config, socket, logs.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `throttle-ctl run` in the receiver namespace with `config` (written to a file of
    /// its own) and `extra` arguments, and waits until it enforces. `generation` tells the
    /// restarts of one test apart (their logs and working files).
    pub fn start(lab: &mut Lab, name: &str, config: &str, extra: &[&str]) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("throttle-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("throttle.yaml");
        if !config_path.exists() || !config.is_empty() {
            std::fs::write(&config_path, config)?;
        }
        let socket = dir.join("admin.sock");
        let starts = std::fs::read_dir(&dir)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
            })
            .count();
        let log = dir.join(format!("daemon-{starts}.log"));
        let file = File::create(&log)?;
        let (receiver, iface, bin) = (
            lab.receiver.clone(),
            lab.receiver_if.clone(),
            throttle_ctl(),
        );
        let mut args = vec![
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--iface",
            &iface,
            "--socket",
            socket.to_str().unwrap(),
            "--stats-interval",
            "0",
        ];
        args.extend_from_slice(extra);
        let pid = lab.spawn(&receiver, bin.to_str().unwrap(), &args, file)?;
        let daemon = Daemon {
            pid,
            dir,
            config: config_path,
            socket,
            log,
        };
        // Ready when this start logged "enforcing" and its API answers (a socket left by a
        // killed daemon exists, but nobody answers on it).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if daemon.log_text().contains("\"enforcing\"")
                && daemon.ctl(&["status"]).status.success()
            {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("throttle-ctl did not start:\n{}", daemon.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a throttle-ctl verb against this daemon's socket.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(throttle_ctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running throttle-ctl")
    }

    /// Runs a read verb with `--json` and parses its output.
    pub fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        if !out.status.success() {
            bail!(
                "throttle-ctl {args:?}: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `throttle-ctl {args:?} --json`"))
    }
}

/// A pin directory of the test's own; on drop, whatever is pinned there is detached and
/// removed, so a failed test never leaves a program enforcing.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(name: &str) -> PinDir {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/throttle-test-{name}-{}",
            std::process::id()
        ));
        let _ = throttle_ctl::dataplane::detach_pinned(&dir);
        PinDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = throttle_ctl::dataplane::detach_pinned(&self.0);
    }
}
