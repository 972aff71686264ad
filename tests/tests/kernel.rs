//! Tier 2: the real XDP object under BPF_PROG_TEST_RUN with crafted packets, one test per
//! verdict path. Time comes from the test clock (`Settings::clock_override_ns`), so window
//! behaviour is deterministic. Needs root.

use std::net::Ipv6Addr;

use aya::programs::{TestRun, TestRunOptions};
use throttle_common::Counters;
use throttle_ctl::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
};
use throttle_tests::{
    have_root,
    packet::{arp, checksum, Ext, Packet, L4, TCP_ACK, TCP_SYN, TPID_8021AD, TPID_8021Q},
    traffic::pin_to_cpu,
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const T0: u64 = 1_000_000_000_000;
const SEC: u64 = 1_000_000_000;

struct Fixture {
    dp: Dataplane,
    rules: u32,
}

impl Fixture {
    fn new(yaml: &str) -> Fixture {
        Fixture::sized(yaml, 1024)
    }

    fn sized(yaml: &str, max_sources: u32) -> Fixture {
        let config = Config::from_yaml(yaml).expect("test config");
        let mut dp = Dataplane::load(LoadOptions {
            max_sources,
            max_rules: config.max_rules,
            test_clock: true,
            pin_dir: None,
        })
        .expect("load");
        dp.set_clock(T0).unwrap();
        dp.apply(&config, &[]).expect("apply");
        Fixture {
            dp,
            rules: config.rules.len() as u32,
        }
    }

    fn set_time(&mut self, ns: u64) {
        self.dp.set_clock(ns).unwrap();
    }

    /// Runs one packet; returns the verdict and the packet as the program left it.
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .dp
            .program()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn verdict(&self, frame: &[u8]) -> u32 {
        self.run(frame).0
    }

    /// How many of `n` copies of `frame` pass.
    fn passes(&self, frame: &[u8], n: usize) -> usize {
        (0..n).filter(|_| self.verdict(frame) == XDP_PASS).count()
    }

    fn counters(&self, id: u32) -> Counters {
        self.dp.counters(self.rules).unwrap()[id as usize]
    }
}

macro_rules! root_or_skip {
    ($name:expr) => {
        if !have_root($name) {
            return;
        }
    };
}

const UDP53: &str = "rules:\n  - {name: dns, protocol: udp, port: 53, limit: 3, window: 1s}\n";

fn udp53(src: [u8; 4]) -> Vec<u8> {
    Packet::v4(src, L4::Udp { dport: 53 }).build()
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

#[test]
fn non_ip_passes_and_is_counted() {
    root_or_skip!("non_ip_passes_and_is_counted");
    let f = Fixture::new(UDP53);
    assert_eq!(f.verdict(&arp()), XDP_PASS);
    // Three VLAN tags: the program looks through two, then sees a tag, not IP.
    let triple = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 }).with_vlans(&[
        TPID_8021AD,
        TPID_8021Q,
        TPID_8021Q,
    ]);
    assert_eq!(f.verdict(&triple.build()), XDP_PASS);
    let c = f.counters(0);
    assert_eq!((c.non_ip, c.passed), (2, 2));
}

#[test]
fn ipv4_source_gets_exactly_its_limit_then_drops() {
    root_or_skip!("ipv4_source_gets_exactly_its_limit_then_drops");
    let f = Fixture::new(UDP53);
    let verdicts: Vec<u32> = (0..5).map(|_| f.verdict(&udp53([198, 18, 0, 2]))).collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    let c = f.counters(1);
    assert_eq!((c.passed, c.dropped, c.new_sources), (3, 2, 1));
    // Another source has its own window.
    assert_eq!(f.passes(&udp53([198, 18, 0, 3]), 5), 3);
    // Another port is not limited by this rule.
    assert_eq!(
        f.passes(
            &Packet::v4([198, 18, 0, 2], L4::Udp { dport: 54 }).build(),
            10
        ),
        10
    );
    assert_eq!(f.counters(0).passed, 10);
}

#[test]
fn window_slides_with_the_previous_window_weighted() {
    root_or_skip!("window_slides_with_the_previous_window_weighted");
    let mut f =
        Fixture::new("rules:\n  - {name: r, protocol: udp, port: 53, limit: 10, window: 1s}\n");
    let p = udp53([198, 18, 0, 2]);
    assert_eq!(f.passes(&p, 20), 10);
    // 40% into the next window, 60% of the previous 10 still count: 4 more fit.
    f.set_time(T0 + SEC + 4 * SEC / 10);
    assert_eq!(f.passes(&p, 20), 4);
    // At the end of that window nearly nothing of the previous one counts.
    f.set_time(T0 + 2 * SEC - 1);
    assert_eq!(f.passes(&p, 20), 6);
    // Two quiet windows later the source starts afresh.
    f.set_time(T0 + 10 * SEC);
    assert_eq!(f.passes(&p, 20), 10);
    let state =
        f.dp.source_state("198.18.0.2".parse().unwrap(), 1)
            .unwrap()
            .unwrap();
    assert_eq!(
        (state.start_ns, state.prev, state.curr),
        (T0 + 10 * SEC, 0, 10)
    );
}

#[test]
fn ipv6_sources_are_limited() {
    root_or_skip!("ipv6_sources_are_limited");
    let f = Fixture::new("rules:\n  - {name: r, protocol: tcp, port: 443, limit: 2, window: 1s}\n");
    let p = Packet::v6(
        v6(2),
        L4::Tcp {
            dport: 443,
            flags: TCP_ACK,
        },
    )
    .build();
    assert_eq!(f.passes(&p, 5), 2);
    assert_eq!(
        f.passes(
            &Packet::v6(
                v6(3),
                L4::Tcp {
                    dport: 443,
                    flags: TCP_ACK
                }
            )
            .build(),
            5
        ),
        2
    );
    assert_eq!(f.counters(1).new_sources, 2);
}

#[test]
fn vlan_and_qinq_are_parsed() {
    root_or_skip!("vlan_and_qinq_are_parsed");
    let f = Fixture::new(UDP53);
    let dot1q = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_vlans(&[TPID_8021Q])
        .build();
    assert_eq!(f.passes(&dot1q, 5), 3);
    let qinq = Packet::v6(v6(2), L4::Udp { dport: 53 })
        .with_vlans(&[TPID_8021AD, TPID_8021Q])
        .build();
    assert_eq!(f.passes(&qinq, 5), 3);
    assert_eq!(f.counters(1).dropped, 4);
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_walked() {
    root_or_skip!("ipv4_options_and_ipv6_extension_headers_are_walked");
    let f = Fixture::new(UDP53);
    let opts = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_v4_options(40)
        .build();
    assert_eq!(f.passes(&opts, 5), 3);
    let ext = Packet::v6(v6(2), L4::Udp { dport: 53 })
        .with_v6_ext(vec![
            Ext::HopByHop,
            Ext::Routing,
            Ext::FirstFragment,
            Ext::DestOptsLong(3),
            Ext::Auth(4),
        ])
        .build();
    assert_eq!(f.passes(&ext, 5), 3);
    // Exactly as many extension headers as the program walks: still parsed.
    let eight = Packet::v6(v6(3), L4::Udp { dport: 53 })
        .with_v6_ext(vec![Ext::DestOpts; 8])
        .build();
    assert_eq!(f.passes(&eight, 5), 3);
    assert_eq!(f.counters(1).dropped, 6);
    // One more: rules could not see its ports, so it is dropped as evasive, not let through.
    let deep = Packet::v6(v6(4), L4::Udp { dport: 53 })
        .with_v6_ext(vec![Ext::DestOpts; 9])
        .build();
    assert_eq!(f.passes(&deep, 5), 0);
    let c = f.counters(0);
    assert_eq!((c.evasive, c.dropped, c.malformed), (5, 5, 0));
}

#[test]
fn tiny_first_fragments_are_dropped_as_evasive() {
    root_or_skip!("tiny_first_fragments_are_dropped_as_evasive");
    let f = Fixture::new("rules:\n  - {name: c, protocol: tcp, port: 443, unit: connections, limit: 1, window: 1s}\n");
    // RFC 1858: a first fragment whose datagram holds only 8 bytes of the TCP header.
    let cut_datagram = |p: Packet, pad: usize| {
        let mut frame = p.build();
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let total = ihl + 8;
        frame[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        frame.truncate(14 + total);
        frame.extend(std::iter::repeat_n(0x12, pad)); // link padding after the datagram
        frame
    };
    let syn = || {
        Packet::v4(
            [198, 18, 0, 2],
            L4::Tcp {
                dport: 443,
                flags: TCP_SYN,
            },
        )
    };
    for pad in [0, 30] {
        let tiny = cut_datagram(syn().with_v4_options(40).with_v4_more_fragments(), pad);
        assert_eq!(
            f.verdict(&tiny),
            XDP_DROP,
            "tiny first fragment, {pad} bytes of padding"
        );
    }
    // The same cut without MF is just a malformed datagram: passed for the stack to discard.
    assert_eq!(f.verdict(&cut_datagram(syn(), 30)), XDP_PASS);
    // IPv6: a first fragment (M set) whose payload ends inside the TCP header.
    let mut frame6 = Packet::v6(
        v6(2),
        L4::Tcp {
            dport: 443,
            flags: TCP_SYN,
        },
    )
    .with_v6_ext(vec![Ext::FirstFragment])
    .build();
    let payload = 8 + 8;
    frame6[18..20].copy_from_slice(&(payload as u16).to_be_bytes());
    frame6.truncate(14 + 40 + payload);
    assert_eq!(f.verdict(&frame6), XDP_DROP);
    let c = f.counters(0);
    assert_eq!((c.evasive, c.malformed), (3, 1));
    assert_eq!(f.counters(1).new_sources, 0);
}

#[test]
fn access_list_applies_before_transport_parsing() {
    root_or_skip!("access_list_applies_before_transport_parsing");
    let f = Fixture::new("deny: [{cidr: 198.18.66.0/24}, {cidr: \"2001:db8:66::/48\"}]\n");
    let src6: Ipv6Addr = "2001:db8:66::1".parse().unwrap();
    let deep = Packet::v6(src6, L4::Udp { dport: 53 })
        .with_v6_ext(vec![Ext::DestOpts; 9])
        .build();
    let truncated = udp53([198, 18, 66, 1]);
    let truncated = {
        let mut t = truncated;
        let total = 20 + 4;
        t[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        t.truncate(14 + total);
        t
    };
    assert_eq!(f.verdict(&deep), XDP_DROP);
    assert_eq!(f.verdict(&truncated), XDP_DROP);
    assert_eq!(f.counters(0).denylisted, 2);
}

#[test]
fn later_fragments_match_only_wildcard_rules() {
    root_or_skip!("later_fragments_match_only_wildcard_rules");
    let f = Fixture::new(
        "rules:\n  - {name: dns, protocol: udp, port: 53, limit: 100, window: 1s}\n  - {name: udp, protocol: udp, limit: 2, window: 1s}\n",
    );
    let frag4 = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_v4_fragment_offset(100)
        .build();
    assert_eq!(f.passes(&frag4, 5), 2);
    // DF set on a whole datagram is not a fragment.
    let mut df = udp53([198, 18, 0, 2]);
    df[20] |= 0x40;
    assert_eq!(f.verdict(&df), XDP_PASS);
    assert_eq!(f.counters(1).passed, 1);
    assert_eq!(f.counters(2).dropped, 3);
    // IPv6 later fragments: their next-header value is not what reassembly uses, so no rule
    // is chosen by it.
    let frag6 = Packet::v6(v6(2), L4::Udp { dport: 53 })
        .with_v6_ext(vec![Ext::Fragment(100)])
        .build();
    assert_eq!(f.passes(&frag6, 5), 5);
    assert_eq!(f.counters(0).passed, 5);
}

#[test]
fn wildcard_rule_applies_when_no_port_rule_matches() {
    root_or_skip!("wildcard_rule_applies_when_no_port_rule_matches");
    let f = Fixture::new(
        "rules:\n  - {name: dns, protocol: udp, port: 53, limit: 5, window: 1s}\n  - {name: udp, protocol: udp, limit: 2, window: 1s}\n",
    );
    assert_eq!(
        f.passes(
            &Packet::v4([198, 18, 0, 2], L4::Udp { dport: 9999 }).build(),
            5
        ),
        2
    );
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 10), 5);
    assert_eq!(f.counters(1).passed, 5);
    assert_eq!(f.counters(2).passed, 2);
}

#[test]
fn allowlist_bypasses_everything() {
    root_or_skip!("allowlist_bypasses_everything");
    let yaml = format!(
        "{UDP53}allow: [198.18.7.0/24, \"2001:db8:7::/48\"]\ndeny: [{{cidr: 198.18.0.0/16}}]\n"
    );
    let f = Fixture::new(&yaml);
    assert_eq!(f.passes(&udp53([198, 18, 7, 9]), 10), 10);
    let v6_allowed = Packet::v6("2001:db8:7::9".parse().unwrap(), L4::Udp { dport: 53 }).build();
    assert_eq!(f.passes(&v6_allowed, 10), 10);
    assert_eq!(f.counters(0).allowlisted, 20);
    assert_eq!(f.counters(1).passed, 0);
}

#[test]
fn allow_wins_over_a_more_specific_deny() {
    root_or_skip!("allow_wins_over_a_more_specific_deny");
    let f =
        Fixture::new("allow: [198.18.7.0/24]\ndeny: [{cidr: 198.18.7.9}, {cidr: 198.18.0.0/16}]\n");
    assert_eq!(f.verdict(&udp53([198, 18, 7, 9])), XDP_PASS);
    assert_eq!(f.verdict(&udp53([198, 18, 8, 9])), XDP_DROP);
    let c = f.counters(0);
    assert_eq!((c.allowlisted, c.denylisted), (1, 1));
}

#[test]
fn denylist_drops_until_expiry() {
    root_or_skip!("denylist_drops_until_expiry");
    let yaml = format!("{UDP53}deny:\n  - {{cidr: 198.18.66.0/24, ttl: 10s}}\n  - {{cidr: \"2001:db8:66::/48\"}}\n");
    let mut f = Fixture::new(&yaml);
    assert_eq!(f.verdict(&udp53([198, 18, 66, 1])), XDP_DROP);
    // Denied sources are dropped for any destination, rule or not.
    assert_eq!(
        f.verdict(
            &Packet::v4(
                [198, 18, 66, 1],
                L4::Tcp {
                    dport: 22,
                    flags: TCP_SYN
                }
            )
            .build()
        ),
        XDP_DROP
    );
    let v6_denied = Packet::v6("2001:db8:66::1".parse().unwrap(), L4::Udp { dport: 53 }).build();
    assert_eq!(f.verdict(&v6_denied), XDP_DROP);
    assert_eq!(f.counters(0).denylisted, 3);
    // The entry applies until its TTL is over, not a nanosecond longer; the v6 one never expires.
    f.set_time(T0 + 10 * SEC - 1);
    assert_eq!(f.verdict(&udp53([198, 18, 66, 1])), XDP_DROP);
    f.set_time(T0 + 10 * SEC);
    assert_eq!(f.verdict(&udp53([198, 18, 66, 1])), XDP_PASS);
    assert_eq!(f.verdict(&v6_denied), XDP_DROP);
}

#[test]
fn a_reload_does_not_extend_a_deny_ttl() {
    root_or_skip!("a_reload_does_not_extend_a_deny_ttl");
    let yaml = "deny:\n  - {cidr: 198.18.66.0/24, ttl: 10s}\n";
    let mut f = Fixture::new(yaml);
    f.set_time(T0 + 6 * SEC);
    f.dp.apply(&Config::from_yaml(yaml).unwrap(), &[]).unwrap();
    f.set_time(T0 + 10 * SEC - 1);
    assert_eq!(f.verdict(&udp53([198, 18, 66, 1])), XDP_DROP);
    f.set_time(T0 + 10 * SEC);
    assert_eq!(
        f.verdict(&udp53([198, 18, 66, 1])),
        XDP_PASS,
        "expired 10 s after the first apply"
    );
}

#[test]
fn neighbour_discovery_always_passes() {
    root_or_skip!("neighbour_discovery_always_passes");
    let f = Fixture::new(
        "rules:\n  - {name: icmp6, protocol: icmpv6, limit: 1, window: 1s}\n  - {name: v4, protocol: icmp, limit: 1, window: 1s}\ndeny: [{cidr: \"2001:db8::/32\"}]\n",
    );
    for ty in 133..=137 {
        let nd = Packet::v6(v6(2), L4::Icmpv6 { ty })
            .with_hop_limit(255)
            .build();
        assert_eq!(f.passes(&nd, 3), 3, "ND type {ty}");
    }
    // Only as RFC 4861 has it: hop limit 255. Echo requests are not ND at all.
    assert_eq!(
        f.verdict(&Packet::v6(v6(2), L4::Icmpv6 { ty: 135 }).build()),
        XDP_DROP
    );
    assert_eq!(
        f.verdict(
            &Packet::v6(v6(2), L4::Icmpv6 { ty: 128 })
                .with_hop_limit(255)
                .build()
        ),
        XDP_DROP
    );
    // ND types carried over IPv4 (protocol 58) are not ND either: limited like the rest.
    let fake = Packet::v4([198, 18, 0, 2], L4::Icmpv6 { ty: 135 }).build();
    assert_eq!(f.passes(&fake, 3), 1);
    assert_eq!(f.counters(0).denylisted, 2);
}

#[test]
fn icmp_rules_limit_icmp() {
    root_or_skip!("icmp_rules_limit_icmp");
    let f = Fixture::new("rules:\n  - {name: ping, protocol: icmp, limit: 2, window: 1s}\n");
    assert_eq!(
        f.passes(&Packet::v4([198, 18, 0, 2], L4::Icmp { ty: 8 }).build(), 5),
        2
    );
}

#[test]
fn byte_rules_count_frame_bytes() {
    root_or_skip!("byte_rules_count_frame_bytes");
    let f = Fixture::new(
        "rules:\n  - {name: b, protocol: udp, port: 53, unit: bytes, limit: 1000, window: 1s}\n",
    );
    let p = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_payload(258)
        .build();
    assert_eq!(p.len(), 300);
    assert_eq!(f.passes(&p, 5), 3);
    // 100 bytes are left: a small frame still fits.
    let small = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_payload(58)
        .build();
    assert_eq!(f.verdict(&small), XDP_PASS);
    let c = f.counters(1);
    assert_eq!((c.bytes_passed, c.bytes_dropped), (1000, 600));
}

#[test]
fn connection_rules_count_only_syn_without_ack() {
    root_or_skip!("connection_rules_count_only_syn_without_ack");
    let f = Fixture::new("rules:\n  - {name: c, protocol: tcp, port: 443, unit: connections, limit: 2, window: 1s}\n");
    let syn = Packet::v4(
        [198, 18, 0, 2],
        L4::Tcp {
            dport: 443,
            flags: TCP_SYN,
        },
    )
    .build();
    let ack = Packet::v4(
        [198, 18, 0, 2],
        L4::Tcp {
            dport: 443,
            flags: TCP_ACK,
        },
    )
    .build();
    let syn_ack = Packet::v4(
        [198, 18, 0, 2],
        L4::Tcp {
            dport: 443,
            flags: TCP_SYN | TCP_ACK,
        },
    )
    .build();
    assert_eq!(f.passes(&syn, 5), 2);
    assert_eq!(f.passes(&ack, 50), 50, "established traffic is not limited");
    assert_eq!(f.passes(&syn_ack, 5), 5, "SYN-ACK is not a new connection");
    let syn6 = Packet::v6(
        v6(2),
        L4::Tcp {
            dport: 443,
            flags: TCP_SYN,
        },
    )
    .build();
    assert_eq!(f.passes(&syn6, 5), 2);
}

#[test]
fn mark_rewrites_dscp_with_a_valid_checksum() {
    root_or_skip!("mark_rewrites_dscp_with_a_valid_checksum");
    let f = Fixture::new(
        "rules:\n  - {name: m, protocol: udp, port: 53, limit: 1, window: 1s, action: mark, dscp: 46}\n",
    );
    // ECN bits set: they must survive the rewrite.
    let p = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
        .with_v4_options(8)
        .with_traffic_class(0x03);
    let frame = p.build();
    let (v, out) = f.run(&frame);
    assert_eq!((v, &out), (XDP_PASS, &frame), "within quota: untouched");
    let (v, out) = f.run(&frame);
    assert_eq!(v, XDP_PASS);
    assert_eq!((out[15] >> 2, out[15] & 3), (46, 3), "DSCP set, ECN kept");
    assert_eq!(
        checksum(&out[14..14 + 28]),
        0,
        "IPv4 header checksum still verifies"
    );
    assert_eq!(out[..15], frame[..15]);
    assert_eq!(out[16..24], frame[16..24]);
    assert_eq!(out[26..], frame[26..]);

    let frame6 = Packet::v6(v6(2), L4::Udp { dport: 53 })
        .with_vlans(&[TPID_8021Q])
        .with_traffic_class(0x03)
        .with_v6_flow_label(0xabcde)
        .build();
    f.run(&frame6);
    let (v, out) = f.run(&frame6);
    assert_eq!(v, XDP_PASS);
    let tclass = (out[18] & 0x0f) << 4 | out[19] >> 4;
    assert_eq!((tclass >> 2, tclass & 3), (46, 3), "DSCP set, ECN kept");
    assert_eq!(out[18] >> 4, 6, "version kept");
    let flow = u32::from_be_bytes([0, out[19] & 0x0f, out[20], out[21]]);
    assert_eq!(flow, 0xabcde, "flow label kept");
    assert_eq!(f.counters(1).marked, 2);
}

#[test]
fn dry_run_counts_but_passes() {
    root_or_skip!("dry_run_counts_but_passes");
    let f = Fixture::new(
        "rules:\n  - {name: d, protocol: udp, port: 53, limit: 2, window: 1s, action: dry-run}\n",
    );
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 10), 10);
    let c = f.counters(1);
    assert_eq!((c.passed, c.dry_run, c.dropped), (10, 8, 0));
}

#[test]
fn truncated_packets_pass_and_are_counted_at_every_boundary() {
    root_or_skip!("truncated_packets_pass_and_are_counted_at_every_boundary");
    let f = Fixture::new(
        "rules:\n  - {name: t, protocol: tcp, limit: 1, window: 1s}\n  - {name: u, protocol: udp, limit: 1, window: 1s}\n  - {name: i, protocol: icmp, limit: 1, window: 1s}\n",
    );
    let kinds = [
        Packet::v4(
            [198, 18, 0, 2],
            L4::Tcp {
                dport: 80,
                flags: TCP_SYN,
            },
        ),
        Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
            .with_v4_options(12)
            .with_vlans(&[TPID_8021Q]),
        Packet::v4([198, 18, 0, 2], L4::Icmp { ty: 8 }),
        Packet::v6(
            v6(2),
            L4::Tcp {
                dport: 80,
                flags: TCP_SYN,
            },
        )
        .with_vlans(&[TPID_8021AD, TPID_8021Q]),
        Packet::v6(v6(2), L4::Udp { dport: 53 }).with_v6_ext(vec![Ext::HopByHop, Ext::Fragment(0)]),
        Packet::v6(v6(2), L4::Icmpv6 { ty: 128 }),
    ];
    let mut cut = 0;
    for p in &kinds {
        let frame = p.build();
        // Every header boundary, one byte either side, and one byte short of the whole frame.
        let mut lengths: Vec<usize> = p
            .boundaries()
            .iter()
            .flat_map(|b| [b - 1, *b, b + 1])
            .collect();
        lengths.push(frame.len() - 1);
        lengths.retain(|l| (14..frame.len()).contains(l));
        lengths.sort();
        lengths.dedup();
        for len in lengths {
            assert_eq!(f.verdict(&frame[..len]), XDP_PASS, "{p:?} cut at {len}");
            cut += 1;
        }
    }
    let c = f.counters(0);
    assert_eq!(
        c.malformed, cut,
        "every truncated frame is counted as malformed"
    );
    assert_eq!(f.dp.totals().unwrap().dropped, 0);
    for id in 1..=3 {
        assert_eq!(
            f.counters(id).new_sources,
            0,
            "no rule saw a truncated frame"
        );
    }
}

#[test]
fn malformed_headers_pass() {
    root_or_skip!("malformed_headers_pass");
    let f = Fixture::new(UDP53);
    let good = udp53([198, 18, 0, 2]);
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let mut v6_bad = Packet::v6(v6(2), L4::Udp { dport: 53 }).build();
    v6_bad[14] = 0x40;
    for frame in [&bad_version, &short_ihl, &long_total, &v6_bad] {
        assert_eq!(f.verdict(frame), XDP_PASS);
    }
    assert_eq!(f.counters(0).malformed, 4);
    // Random frames never abort.
    let mut seed = 0x2545f4914f6cdd1du64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = 14 + (seed % 200) as usize;
        let mut frame: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
        if seed.is_multiple_of(3) {
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
        } else if seed % 3 == 1 {
            frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        }
        assert_ne!(f.verdict(&frame), XDP_ABORTED);
    }
    // Every frame got a verdict and was counted once.
    let totals = f.dp.totals().unwrap();
    assert_eq!(totals.passed + totals.dropped, 2000 + 4);
}

#[test]
fn reload_switches_rule_sets_in_one_step() {
    root_or_skip!("reload_switches_rule_sets_in_one_step");
    let mut f = Fixture::new(UDP53);
    assert_eq!(f.dp.settings().unwrap().generation, 1);
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 10), 3);
    let config = Config::from_yaml(
        "rules:\n  - {name: dns, protocol: udp, port: 53, limit: 5, window: 1s}\n",
    )
    .unwrap();
    assert_eq!(f.dp.apply(&config, &[]).unwrap().generation, 2);
    let s = f.dp.settings().unwrap();
    assert_eq!((s.generation, s.active_slot), (2, 0));
    // Same rule id: the source's window carries on, with the higher limit.
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 10), 2);
    // Slot 1 is reused now: the UDP 53 rule of generation 1 must not linger in it.
    let other = Config::from_yaml(
        "rules:\n  - {name: ntp, protocol: udp, port: 123, limit: 1, window: 1s}\n",
    )
    .unwrap();
    assert_eq!(f.dp.apply(&other, &[]).unwrap().generation, 3);
    assert_eq!(f.dp.settings().unwrap().active_slot, 1);
    assert_eq!(f.passes(&udp53([198, 18, 0, 9]), 10), 10);
    assert_eq!(
        f.passes(
            &Packet::v4([198, 18, 0, 9], L4::Udp { dport: 123 }).build(),
            10
        ),
        1
    );
    // Removing every rule stops limiting.
    f.dp.apply(&Config::from_yaml("{}").unwrap(), &[]).unwrap();
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 10), 10);
}

#[test]
fn rule_ids_follow_rules_and_are_not_reused_soon() {
    root_or_skip!("rule_ids_follow_rules_and_are_not_reused_soon");
    let rule = |name: &str, port: u16| {
        format!("  - {{name: {name}, protocol: udp, port: {port}, limit: 5, window: 1s}}\n")
    };
    let mut f = Fixture::new(&format!("rules:\n{}{}", rule("a", 1), rule("b", 2)));
    let ids = |f: &mut Fixture, yaml: String| {
        f.dp.apply(&Config::from_yaml(&yaml).unwrap(), &[])
            .unwrap()
            .ids
    };
    // Same identity (name, unit, window), other position and port: same id.
    assert_eq!(
        ids(&mut f, format!("rules:\n{}{}", rule("b", 3), rule("a", 1))),
        vec![2, 1]
    );
    // `b` removed, then `c` added: `c` must not get b's id (its windows are still keyed by it).
    assert_eq!(ids(&mut f, format!("rules:\n{}", rule("a", 1))), vec![1]);
    assert_eq!(
        ids(&mut f, format!("rules:\n{}{}", rule("a", 1), rule("c", 2))),
        vec![1, 3]
    );
    // A changed window is a new rule with a new id.
    let changed =
        "rules:\n  - {name: a, protocol: udp, port: 1, limit: 5, window: 2s}\n".to_string();
    assert_eq!(ids(&mut f, changed), vec![4]);
}

#[test]
fn max_rules_sizes_the_counters_and_bounds_the_rule_ids() {
    root_or_skip!("max_rules_sizes_the_counters_and_bounds_the_rule_ids");
    let rules = |names: &[&str]| {
        let body: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "  - {{name: {n}, protocol: udp, port: {}, limit: 2, window: 1s}}\n",
                    53 + i
                )
            })
            .collect();
        format!("max_rules: 4\nrules:\n{body}")
    };
    let mut f = Fixture::new(&rules(&["a", "b", "c"]));
    assert_eq!(f.dp.max_rules(), 4);
    assert_eq!(
        f.dp.map_info(throttle_common::names::COUNTERS)
            .unwrap()
            .max_entries(),
        4
    );
    // Ids go round within 1..4: replacing every rule reuses ids of removed rules.
    let applied =
        f.dp.apply(&Config::from_yaml(&rules(&["d", "e", "f"])).unwrap(), &[])
            .unwrap();
    let mut ids = applied.ids.clone();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "three distinct ids below max_rules");
    // Counted under the right id with the smaller counters array.
    assert_eq!(f.passes(&udp53([198, 18, 0, 2]), 5), 2);
    assert_eq!(f.counters(applied.ids[0]).dropped, 3);
    // A config that needs more ids than the loaded program has is refused, the rules stay.
    let bigger = Config::from_yaml(
        &rules(&["a", "b", "c", "d", "e"]).replace("max_rules: 4", "max_rules: 8"),
    )
    .unwrap();
    let e = f.dp.apply(&bigger, &[]).unwrap_err().to_string();
    assert!(
        e.contains("5 rules") && e.contains("room for 3 rules"),
        "{e}"
    );
    assert_eq!(f.dp.active_rules().unwrap().len(), 3);
}

#[test]
fn batch_reads_agree_with_reads_one_element_at_a_time() {
    root_or_skip!("batch_reads_agree_with_reads_one_element_at_a_time");
    let f = Fixture::sized(
        "rules:\n  - {name: dns, protocol: udp, port: 53, limit: 3, window: 1s}\n  \
         - {name: ntp, protocol: udp, port: 123, limit: 3, window: 1s}\n",
        16_384,
    );
    // More sources than one batch call returns (4096), under two rules.
    for i in 0..3000u32 {
        let [_, _, a, b] = (i + 1).to_be_bytes();
        f.verdict(&udp53([198, 18, a, b]));
        f.verdict(&Packet::v4([198, 18, a, b], L4::Udp { dport: 123 }).build());
    }
    let mut batched = f.dp.sources(usize::MAX).unwrap();
    let info = f.dp.map_info(throttle_common::names::SOURCES).unwrap();
    let map = aya::maps::Map::LruHashMap(aya::maps::MapData::from_id(info.id()).unwrap());
    let table: aya::maps::HashMap<_, throttle_common::SourceKey, throttle_common::WindowState> =
        aya::maps::HashMap::try_from(map).unwrap();
    let mut one_by_one: Vec<_> = table.iter().map(|kv| kv.unwrap()).collect();
    let order = |(k, _): &(throttle_common::SourceKey, _)| (k.addr, k.rule_id);
    batched.sort_by_key(order);
    one_by_one.sort_by_key(order);
    assert_eq!(batched.len(), 6000);
    assert_eq!(batched, one_by_one);
    // Bounded reads stop at their bound, also where it falls inside a hash bucket (which the
    // kernel returns whole or not at all).
    for max in 1..=300 {
        assert_eq!(f.dp.sources(max).unwrap().len(), max);
    }
    assert_eq!(
        f.dp.count_entries(throttle_common::names::SOURCES).unwrap(),
        6000
    );

    // Per-CPU counters summed from one batch, against the per-rule figures they add up to.
    let counters = f.dp.counters(f.dp.max_rules() - 1).unwrap();
    assert_eq!(counters.len(), 1024);
    let ids = f.dp.active_rules().unwrap();
    for rule in &ids {
        let c = counters[rule.id as usize];
        assert_eq!((c.passed, c.new_sources), (3000, 3000), "rule {}", rule.id);
    }
    assert_eq!(f.dp.totals().unwrap().passed, 6000);
    assert!(f.dp.counters(1024).is_err(), "past the array's end");

    // Types that do not fit a map are refused before the kernel writes anything.
    let info = f.dp.map_info(throttle_common::names::COUNTERS).unwrap();
    let data = aya::maps::MapData::from_id(info.id()).unwrap();
    let e = throttle_ctl::batch::for_each::<u32, u64>(&data, 1, None, 10, |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn reload_replaces_the_access_list() {
    root_or_skip!("reload_replaces_the_access_list");
    let mut f = Fixture::new(
        "deny: [{cidr: 198.18.66.0/24}, {cidr: \"2001:db8:66::/48\"}]\nallow: [198.18.7.0/24]\n",
    );
    let denied6 = Packet::v6("2001:db8:66::1".parse().unwrap(), L4::Udp { dport: 53 }).build();
    assert_eq!(f.verdict(&udp53([198, 18, 66, 1])), XDP_DROP);
    assert_eq!(f.verdict(&denied6), XDP_DROP);
    f.dp.apply(
        &Config::from_yaml("deny: [{cidr: 198.18.67.0/24}]\n").unwrap(),
        &[],
    )
    .unwrap();
    assert_eq!(
        f.verdict(&udp53([198, 18, 66, 1])),
        XDP_PASS,
        "stale v4 deny entry removed"
    );
    assert_eq!(f.verdict(&denied6), XDP_PASS, "stale v6 deny entry removed");
    assert_eq!(f.verdict(&udp53([198, 18, 67, 1])), XDP_DROP);
    assert_eq!(f.counters(0).allowlisted, 0);
    f.dp.apply(&Config::from_yaml("{}").unwrap(), &[]).unwrap();
    assert_eq!(f.dp.settings().unwrap().acl_entries, 0);
    assert_eq!(f.verdict(&udp53([198, 18, 67, 1])), XDP_PASS);
}

#[test]
fn pinned_maps_are_adopted_and_an_incompatible_layout_is_refused() {
    root_or_skip!("pinned_maps_are_adopted_and_an_incompatible_layout_is_refused");
    let pins = throttle_tests::daemon::PinDir::new("schema");
    let options = || LoadOptions {
        max_sources: 1024,
        max_rules: throttle_common::DEFAULT_MAX_RULES,
        test_clock: true,
        pin_dir: Some(pins.path().to_path_buf()),
    };
    let config = Config::from_yaml(UDP53).unwrap();
    {
        let mut dp = Dataplane::load(options()).unwrap();
        assert!(!dp.adopted());
        dp.set_clock(T0).unwrap();
        dp.apply(&config, &[]).unwrap();
        dp.program().unwrap();
    }
    // A second load takes the state over: same generation, same counters, same windows.
    let mut dp = Dataplane::load(options()).unwrap();
    assert!(dp.adopted());
    assert_eq!(dp.settings().unwrap().generation, 1);
    assert_eq!(
        dp.apply(&config, &[]).unwrap().ids,
        vec![1],
        "the rule keeps its id"
    );
    // While one holds the pins, a second cannot take them.
    let second = Dataplane::load(options())
        .err()
        .expect("second holder refused")
        .to_string();
    assert!(
        second.contains("another throttle-ctl is running with these pins"),
        "{second}"
    );
    drop(dp);

    // A daemon configured with another max_rules keeps the pinned counters' size, smaller or
    // larger, and every id of it stays readable.
    for configured in [8, 4096] {
        let mut dp = Dataplane::load(LoadOptions {
            max_rules: configured,
            ..options()
        })
        .unwrap();
        assert!(dp.adopted());
        assert_eq!(dp.max_rules(), throttle_common::DEFAULT_MAX_RULES);
        assert_eq!(dp.counters(dp.max_rules() - 1).unwrap().len(), 1024);
        assert_eq!(dp.apply(&config, &[]).unwrap().ids, vec![1]);
    }

    // Maps written by another schema version are refused, with the way out in the message.
    let mut settings: aya::maps::Array<_, throttle_common::Settings> = aya::maps::Array::try_from(
        aya::maps::Map::Array(aya::maps::MapData::from_pin(pins.path().join("SETTINGS")).unwrap()),
    )
    .unwrap();
    let mut s = settings.get(&0, 0).unwrap();
    s.schema_version = 99;
    settings.set(0, s, 0).unwrap();
    let err = Dataplane::load(options())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("throttle-ctl detach"),
        "{err}"
    );

    // An array the program indexes with constants must have the size this build expects.
    s.schema_version = throttle_common::SCHEMA_VERSION;
    settings.set(0, s, 0).unwrap();
    drop(settings);
    Dataplane::load(options()).expect("the schema restored, the pins are adopted again");
    let rules_pin = pins.path().join("RULES");
    std::fs::remove_file(&rules_pin).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&rules_pin)
        .args([
            "type", "array", "key", "4", "value", "48", "entries", "10", "name", "RULES",
        ])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Dataplane::load(options())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("RULES has 10 entries, this build expects 32768"),
        "{err}"
    );
}

#[test]
fn one_source_on_two_cpus_gets_the_limit_once() {
    root_or_skip!("one_source_on_two_cpus_gets_the_limit_once");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let f =
        Fixture::new("rules:\n  - {name: r, protocol: udp, port: 53, limit: 5000, window: 1s}\n");
    let frame = udp53([198, 18, 0, 2]);
    let fixture = &f;
    let passed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cpus.max(2))
            .map(|cpu| {
                let frame = frame.clone();
                s.spawn(move || {
                    pin_to_cpu(cpu % cpus);
                    fixture.passes(&frame, 10_000)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(
        passed, 5000,
        "{cpus} CPUs, one shared window: exactly the limit"
    );
    let c = f.counters(1);
    assert_eq!(
        (c.passed, c.dropped),
        (5000, 10_000 * cpus.max(2) as u64 - 5000)
    );
}
