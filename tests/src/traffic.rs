//! Real traffic for the end-to-end tier and the demo: UDP senders with a chosen pace in the
//! sender namespace, and a receiver that counts what gets through per source address.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier, Mutex,
    },
    time::{Duration, Instant},
};

use crate::netns::Lab;

pub fn force_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: setsockopt with a valid fd and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Datagrams received per source address, readable while the receiver runs.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<HashMap<IpAddr, u64>>>);

impl Received {
    pub fn from(&self, source: &str) -> u64 {
        let addr: IpAddr = source.parse().expect("an IP address");
        self.0.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }
}

/// Counts datagrams per source address on [::]:`port` in the receiver namespace, until `stop`
/// is set and the socket is idle. Returns once the socket is bound.
pub fn receiver(
    lab: &Lab,
    port: u16,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Received) {
    let (tx, rx) = std::sync::mpsc::channel();
    let received = Received::default();
    let counts = received.clone();
    let handle = Lab::in_ns(&lab.receiver, move || {
        let sock = UdpSocket::bind(("::", port)).expect("bind receiver");
        force_rcvbuf(&sock, 256 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) => {
                    *counts
                        .0
                        .lock()
                        .unwrap()
                        .entry(from.ip().to_canonical())
                        .or_insert(0) += 1
                }
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
    });
    rx.recv().expect("receiver ready");
    (handle, received)
}

pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the current thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What a sender does over the test's duration.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// One datagram every `every`, from a thread that spins between sends.
    Flood { every: Duration },
    /// One datagram every `every`, never catching up on missed slots: at most
    /// duration / every in any window.
    Steady { every: Duration },
    /// `count` datagrams as fast as possible.
    Burst { count: u64 },
}

/// Sends UDP from `src` to the receiver's `port` for `duration`, starting when all parties
/// reached `start`; returns the number of datagrams sent.
pub fn sender(
    lab: &Lab,
    src: &'static str,
    port: u16,
    cpu: usize,
    pace: Pace,
    duration: Duration,
    start: Arc<Barrier>,
) -> std::thread::JoinHandle<u64> {
    Lab::in_ns(&lab.sender, move || {
        let mut sent = 0u64;
        send_paced(src, port, cpu, pace, duration, &start, |_| sent += 1);
        sent
    })
}

/// As [`sender`], and returns the CLOCK_MONOTONIC time of every datagram sent: the clock the
/// XDP program reads, so a test can replay the sends through the sliding window and know
/// what the program should have admitted.
pub fn timed_sender(
    lab: &Lab,
    src: &'static str,
    port: u16,
    cpu: usize,
    pace: Pace,
    duration: Duration,
    start: Arc<Barrier>,
) -> std::thread::JoinHandle<Vec<u64>> {
    Lab::in_ns(&lab.sender, move || {
        let mut times = Vec::new();
        send_paced(src, port, cpu, pace, duration, &start, |t| times.push(t));
        times
    })
}

/// The send loop of both senders: calls `sent` with the time taken just before each
/// datagram that was sent.
fn send_paced(
    src: &str,
    port: u16,
    cpu: usize,
    pace: Pace,
    duration: Duration,
    start: &Barrier,
    mut sent: impl FnMut(u64),
) {
    pin_to_cpu(cpu);
    let src: IpAddr = src.parse().unwrap();
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind sender");
    let dst = SocketAddr::new(Lab::receiver_addr(src), port);
    let payload = [0x5au8; 64];
    let mut send = || {
        let t = throttle_ctl::dataplane::monotonic_ns();
        if sock.send_to(&payload, dst).is_ok() {
            sent(t);
        }
    };
    start.wait();
    let t0 = Instant::now();
    let end = t0 + duration;
    match pace {
        Pace::Burst { count } => {
            for _ in 0..count {
                send();
            }
        }
        Pace::Flood { every } => {
            // Spin-paced: the flood must be dense at every window end (a gap of 1% of a
            // window there costs 1% of that window's quota), so each flooding thread owns a
            // CPU and never sleeps. A thread descheduled for a while catches up, but never
            // past `end`.
            let mut next = t0;
            while next < end && Instant::now() < end {
                send();
                next += every;
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        }
        Pace::Steady { every } => {
            let mut next = t0;
            while next < end {
                send();
                next = (next + every).max(Instant::now());
                let wait = next.saturating_duration_since(Instant::now());
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait - Duration::from_micros(100));
                }
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        }
    }
}
