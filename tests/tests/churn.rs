//! Tier 3: a spoofed-source churn flood (every frame from a new random address) against the
//! real daemon. The source table stays within `max_sources`, a compliant source keeps its
//! whole quota, and the program keeps running. Needs root.

use std::{
    ffi::CString,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    time::Duration,
};

use throttle_ctl::control::{Stats, Status};
use throttle_tests::{
    daemon::Daemon,
    have_root,
    netns::Lab,
    packet::{Packet, L4},
    traffic::{receiver, sender, Pace},
};

const PORT: u16 = 9000;
const COMPLIANT: &str = "198.18.0.4";
const MAX_SOURCES: u64 = 1024;
const SPOOFED_FRAMES: u64 = 200_000;

/// Sends `count` UDP frames to PORT from random sources in 198.18.128.0/17, straight onto the
/// sender's veth through an AF_PACKET socket.
fn spoofed_flood(lab: &Lab, count: u64) -> std::thread::JoinHandle<u64> {
    let ifname = lab.sender_if.clone();
    Lab::in_ns(&lab.sender, move || {
        let name = CString::new(ifname).unwrap();
        // SAFETY: plain socket calls on values we own; the frame buffers outlive each send.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let bound = libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut sent = 0;
            for _ in 0..count {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let src = [198, 18, 128 | (seed >> 8) as u8 & 0x7f, seed as u8];
                let frame = Packet::v4(src, L4::Udp { dport: PORT }).build();
                if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) == frame.len() as isize {
                    sent += 1;
                }
            }
            libc::close(fd);
            sent
        }
    })
}

#[test]
fn a_spoofed_source_churn_flood_keeps_memory_bounded_and_compliant_sources_whole() {
    if !have_root("a_spoofed_source_churn_flood_keeps_memory_bounded_and_compliant_sources_whole") {
        return;
    }
    let mut lab = Lab::new("churn", 2, &[COMPLIANT]).unwrap();
    let config = format!(
        "max_sources: {MAX_SOURCES}\nrules:\n  - {{name: api, protocol: udp, port: {PORT}, limit: 100, window: 100ms}}\n"
    );
    let daemon = Daemon::start(&mut lab, "churn", &config, &["--no-pin"]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, received) = receiver(&lab, PORT, stop.clone());
    // 30 per 100 ms: a third of the quota, steadily, through the whole flood.
    let compliant = sender(
        &lab,
        COMPLIANT,
        PORT,
        1,
        Pace::Steady {
            every: Duration::from_micros(3333),
        },
        Duration::from_secs(3),
        Arc::new(Barrier::new(1)),
    );
    let spoofed = spoofed_flood(&lab, SPOOFED_FRAMES).join().unwrap();
    let compliant_sent = compliant.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    receiving.join().unwrap();

    let status: Status = daemon.json(&["status"]).unwrap();
    let stats: Stats = daemon.json(&["stats"]).unwrap();
    let sources = status.maps.iter().find(|m| m.name == "sources").unwrap();
    let got = received.from(COMPLIANT);
    println!(
        "CHURN spoofed_sent={spoofed} new_sources={} tracked={} max_sources={} compliant_sent={compliant_sent} compliant_received={got}",
        stats.rules[0].counters.new_sources, sources.entries, sources.max_entries
    );
    assert!(spoofed > SPOOFED_FRAMES * 9 / 10);
    assert!(
        stats.rules[0].counters.new_sources > 10 * MAX_SOURCES,
        "the flood churned the table"
    );
    assert_eq!(sources.max_entries, MAX_SOURCES);
    assert!(
        (MAX_SOURCES / 2..=MAX_SOURCES).contains(&sources.entries),
        "tracked sources stay bounded (and the table is in use): {}",
        sources.entries
    );
    assert_eq!(
        got, compliant_sent,
        "the compliant source kept its whole quota"
    );
    assert!(
        status.program_id > 0,
        "the program is still loaded and the daemon answers"
    );
    assert!(
        !daemon.log_text().contains("\"ERROR\""),
        "{}",
        daemon.log_text()
    );
}
