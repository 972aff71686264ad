//! A two-host lab: a sender and a receiver network namespace joined by a veth pair, made by
//! the test itself and removed on drop (also when the test panics). Addresses come only from
//! 198.18.0.0/15 and 2001:db8::/32.

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};

pub const RECEIVER_V4: &str = "198.18.0.1";
pub const RECEIVER_V6: &str = "2001:db8::1";

pub struct Lab {
    pub sender: String,
    pub receiver: String,
    /// The receiver's end of the veth pair (where XDP attaches).
    pub receiver_if: String,
    pub sender_if: String,
    children: Vec<Child>,
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &[&str]) -> Result<Output> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Lab {
    /// `tag` keeps names unique between tests; `queues` sets veth rx/tx queues (several let
    /// different CPUs run the receiver's XDP program at once). `sender_addrs` are the
    /// sender's source addresses (198.18.0.0/24 and 2001:db8::/64).
    pub fn new(tag: &str, queues: u32, sender_addrs: &[&str]) -> Result<Lab> {
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let lab = Lab {
            sender: format!("thr-{id}-s"),
            receiver: format!("thr-{id}-r"),
            sender_if: format!("ts{id}"),
            receiver_if: format!("tr{id}"),
            children: Vec::new(),
        };
        // Leftovers of an earlier, killed run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &lab.sender])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &lab.receiver])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &lab.sender])?;
        run(&["ip", "netns", "add", &lab.receiver])?;
        let q = queues.to_string();
        run(&[
            "ip",
            "-n",
            &lab.sender,
            "link",
            "add",
            &lab.sender_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &lab.receiver_if,
            "netns",
            &lab.receiver,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        for (ns, ifname, v4, v6) in [
            (
                &lab.receiver,
                &lab.receiver_if,
                "198.18.0.1/24",
                "2001:db8::1/64",
            ),
            (
                &lab.sender,
                &lab.sender_if,
                "198.18.0.2/24",
                "2001:db8::2/64",
            ),
        ] {
            lab.ip(ns, &["addr", "add", v4, "dev", ifname])?;
            lab.ip(ns, &["addr", "add", v6, "dev", ifname, "nodad"])?;
            lab.ip(ns, &["link", "set", ifname, "up"])?;
            lab.ip(ns, &["link", "set", "lo", "up"])?;
        }
        for addr in sender_addrs {
            let with_len = if addr.contains(':') {
                format!("{addr}/64")
            } else {
                format!("{addr}/24")
            };
            let mut args = vec!["addr", "add", &with_len, "dev", &lab.sender_if];
            if addr.contains(':') {
                args.push("nodad");
            }
            lab.ip(&lab.sender, &args)?;
        }
        // Static neighbours: no ARP/ND round trip in the way of the first packets.
        let mac = |ns: &str, ifname: &str| -> Result<String> {
            let out = run(&["ip", "-n", ns, "-br", "link", "show", ifname])?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.split_whitespace()
                .nth(2)
                .map(str::to_string)
                .context("no MAC in `ip -br link`")
        };
        let receiver_mac = mac(&lab.receiver, &lab.receiver_if)?;
        lab.ip(
            &lab.sender,
            &[
                "neigh",
                "replace",
                RECEIVER_V4,
                "lladdr",
                &receiver_mac,
                "dev",
                &lab.sender_if,
            ],
        )?;
        lab.ip(
            &lab.sender,
            &[
                "neigh",
                "replace",
                RECEIVER_V6,
                "lladdr",
                &receiver_mac,
                "dev",
                &lab.sender_if,
            ],
        )?;
        Ok(lab)
    }

    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = vec!["ip", "-n", ns];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// Starts a process inside `ns`; it is killed when the lab is dropped. It enters the
    /// namespace with setns() rather than `ip netns exec`, which would also give it a mount
    /// namespace with a fresh /sys and no /sys/fs/bpf to pin in.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: File) -> Result<u32> {
        let netns = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening netns {ns}"))?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: only async-signal-safe setns() between fork and exec, on an fd kept open
        // until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        drop(netns);
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Waits (30 s at most, then kills it and fails) for a spawned child to exit, returning
    /// its status code.
    pub fn wait(&mut self, pid: u32) -> Result<Option<i32>> {
        let pos = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .context("no such child")?;
        let mut child = self.children.remove(pos);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("pid {pid} did not exit within 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Runs `f` on a thread that has entered `ns`: sockets it makes live in that namespace.
    pub fn in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on an fd we own; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// The receiver's IP for a source of the given family.
    pub fn receiver_addr(source: IpAddr) -> IpAddr {
        match source {
            IpAddr::V4(_) => RECEIVER_V4.parse().unwrap(),
            IpAddr::V6(_) => RECEIVER_V6.parse().unwrap(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first so a daemon detaches cleanly; then make sure.
            // SAFETY: kill on a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.children {
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes the veth end in it, and with it the peer.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.sender])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.receiver])
            .status();
    }
}
