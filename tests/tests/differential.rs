//! Tier 2: 100k random and mutated frames through the real XDP program under
//! BPF_PROG_TEST_RUN, each verdict (and, when it passes, the frame it leaves) compared with the
//! userspace reference model (`throttle_ctl::model`) holding the same rules, lists and windows.
//! Needs root.

use std::net::Ipv6Addr;

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use throttle_ctl::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
    model::Model,
};
use throttle_tests::{
    have_root,
    packet::{Ext, Packet, L4, TCP_ACK, TCP_SYN, TPID_8021AD, TPID_8021Q},
};

const PACKETS: usize = 100_000;
const T0: u64 = 1_000_000_000_000;

const CONFIG: &str = r#"
rules:
  - {name: tcp443, protocol: tcp, port: 443, unit: connections, limit: 20, window: 1s}
  - {name: tcp-any, protocol: tcp, limit: 50, window: 500ms, action: mark, dscp: 10}
  - {name: udp53, protocol: udp, port: 53, limit: 30, window: 1s}
  - {name: udp-any, protocol: udp, unit: bytes, limit: 3000, window: 1s}
  - {name: icmp, protocol: icmp, limit: 10, window: 1s, action: mark, dscp: 46}
  - {name: icmp6, protocol: icmpv6, limit: 10, window: 2s, action: dry-run}
allow: [198.18.7.0/24, "2001:db8:7::/48"]
deny:
  - {cidr: 198.18.66.0/24, ttl: 20s}
  - {cidr: "2001:db8:66::/48"}
  - {cidr: 198.18.0.0/20, ttl: 40s}
  - {cidr: 198.18.8.0/24, ttl: 10s}
"#;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn v4_source(rng: &mut Rng) -> [u8; 4] {
    [
        198,
        18,
        rng.pick(&[0, 1, 7, 8, 16, 66]),
        1 + rng.below(4) as u8,
    ]
}

fn v6_source(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        rng.pick(&[0, 7, 66, 9]),
        0,
        0,
        0,
        0,
        1 + rng.below(3) as u16,
    )
}

fn l4(rng: &mut Rng, v6: bool) -> L4 {
    let any = rng.below(65536) as u16;
    match rng.below(5) {
        0 | 1 => L4::Tcp {
            dport: rng.pick(&[443, 80, 443, 8080, any]),
            flags: rng.pick(&[TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK, 0]),
        },
        2 | 3 => L4::Udp {
            dport: rng.pick(&[53, 53, 9000, any]),
        },
        _ if v6 => L4::Icmpv6 {
            ty: rng.pick(&[128, 129, 133, 134, 135, 136, 137]),
        },
        _ => L4::Icmp {
            ty: rng.pick(&[0, 8, 3]),
        },
    }
}

/// A well-formed frame of a random kind.
fn seed(rng: &mut Rng) -> Packet {
    let v6 = rng.chance(40);
    let l4 = l4(rng, v6);
    let mut p = if v6 {
        Packet::v6(v6_source(rng), l4)
    } else {
        Packet::v4(v4_source(rng), l4)
    };
    p = p.with_payload(rng.below(300) as usize);
    if rng.chance(15) {
        let tags: &[u16] = rng.pick(&[
            &[TPID_8021Q][..],
            &[TPID_8021AD, TPID_8021Q][..],
            &[TPID_8021Q, TPID_8021Q, TPID_8021Q][..],
        ]);
        p = p.with_vlans(tags);
    }
    if v6 {
        if rng.chance(30) {
            let n = rng.below(10) as usize;
            let exts: Vec<Ext> = (0..n)
                .map(|_| match rng.below(6) {
                    0 => Ext::HopByHop,
                    1 => Ext::Routing,
                    2 => Ext::DestOptsLong(rng.below(3) as u8),
                    3 => Ext::Auth(rng.below(3) as u8),
                    4 => Ext::FirstFragment,
                    _ => Ext::DestOpts,
                })
                .collect();
            p = p.with_v6_ext(exts);
        }
        if rng.chance(5) {
            let any = 1 + rng.below(8191) as u16;
            p = p.with_v6_ext(vec![Ext::Fragment(rng.pick(&[1, 4096, 8191, any]))]);
        }
        if rng.chance(30) {
            p = p.with_hop_limit(255);
        }
        p = p
            .with_traffic_class(rng.below(256) as u8)
            .with_v6_flow_label(rng.next() as u32);
    } else {
        if rng.chance(20) {
            p = p.with_v4_options(rng.below(41) as usize);
        }
        if rng.chance(5) {
            let any = 1 + rng.below(8191) as u16;
            p = p.with_v4_fragment_offset(rng.pick(&[1, 4096, 8191, any]));
        }
        if rng.chance(5) {
            p = p.with_v4_more_fragments();
        }
        p = p.with_traffic_class(rng.below(256) as u8);
    }
    p
}

/// A seed, possibly cut, with fields or bytes changed, or plain noise.
fn frame(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(3) {
        let len = 14 + rng.below(200) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(70) {
            f[12..14].copy_from_slice(&rng.pick(&[[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]]));
        }
        return f;
    }
    let mut f = seed(rng).build();
    if rng.chance(10) {
        let cut = 14 + rng.below((f.len() - 13) as u64) as usize;
        f.truncate(cut.min(f.len()));
    }
    if rng.chance(10) {
        for _ in 0..1 + rng.below(3) {
            let at = 12 + rng.below((f.len() - 12) as u64) as usize;
            f[at] ^= 1 << rng.below(8);
        }
    }
    if rng.chance(5) && f.len() > 22 {
        // A length field (IPv4 total length / IPv6 payload length, untagged) set at random.
        let at = if f[12..14] == [0x86, 0xdd] { 18 } else { 16 };
        f[at..at + 2].copy_from_slice(&(rng.below(1600) as u16).to_be_bytes());
    }
    if rng.chance(3) {
        f.extend((0..rng.below(40)).map(|_| 0xee)); // link padding
    }
    f
}

#[test]
fn the_program_agrees_with_the_reference_model_on_100k_frames() {
    if !have_root("the_program_agrees_with_the_reference_model_on_100k_frames") {
        return;
    }
    let config = Config::from_yaml(CONFIG).unwrap();
    let mut dp = Dataplane::load(LoadOptions {
        max_sources: 65_536,
        max_rules: config.max_rules,
        test_clock: true,
        pin_dir: None,
    })
    .unwrap();
    dp.set_clock(T0).unwrap();
    dp.apply(&config, &[]).unwrap();
    let acl: Vec<(IpNet, throttle_common::AclEntry)> = dp
        .acl_entries()
        .unwrap()
        .into_iter()
        .map(|(c, e)| (c.0, e))
        .collect();
    let mut model = Model::new(dp.active_rules().unwrap(), acl);

    let mut rng = Rng(0x7468_726f_7474_6c65);
    let (mut now, mut mismatches, mut errors, mut passed, mut dropped) = (T0, Vec::new(), 0, 0, 0);
    for i in 0..PACKETS {
        // Time moves on by up to 1 ms per frame: windows roll, deny entries expire.
        if rng.chance(30) {
            now += rng.below(1_000_000);
            dp.set_clock(now).unwrap();
        }
        let frame = frame(&mut rng);
        let mut out = vec![0u8; frame.len() + 256];
        let result = dp.program().unwrap().test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        });
        let Ok(result) = result else {
            errors += 1;
            continue;
        };
        out.truncate(result.data_size_out as usize);
        let expected = model.decide(&frame, now);
        let verdict_matches = match result.return_value {
            1 => !expected.pass,
            2 => expected.pass,
            _ => false,
        };
        if result.return_value == 2 {
            passed += 1;
        } else {
            dropped += 1;
        }
        if !verdict_matches || (expected.pass && out != expected.frame) {
            mismatches.push(format!(
                "#{i}: kernel {} model {} frame {:02x?}\n  out   {:02x?}\n  model {:02x?}",
                result.return_value, expected.pass, frame, out, expected.frame
            ));
        }
    }
    println!(
        "DIFFERENTIAL packets={PACKETS} mismatches={} errors={errors} passed={passed} dropped={dropped} seconds_simulated={}",
        mismatches.len(),
        (now - T0) / 1_000_000_000
    );
    assert!(dropped > 1000 && passed > 1000, "both verdicts exercised");
    assert_eq!(errors, 0);
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}
