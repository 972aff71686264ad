//! A reference model of the XDP program's decision, in plain safe Rust over a byte slice.
//!
//! It is written from the behaviour documented in docs/architecture.md ("A packet's way"),
//! not from the kernel code, so that running the same packets through both (the differential
//! test of the kernel tier) finds where either is wrong. The sliding window is the one shared
//! `throttle_common::admit`: that math is the specification, property-tested on its own.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use throttle_common::{
    admit, proto, refuse, v4_mapped, AclEntry, Action, Rule, SourceKey, Unit, WindowState,
    ACL_ALLOW, ACL_DENY, ANY_PORT,
};

/// IPv6 extension headers walked before a chain counts as evasive.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// What the parser learnt beyond the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Protocol and destination port known (ANY_PORT for ICMP and IPv4 later fragments).
    Ports,
    /// IPv6 later fragment: no rule applies.
    Unmatched,
    /// A header cut short: malformed, passed.
    Truncated,
    /// Tiny first fragment or over-long IPv6 header chain: dropped.
    Evasive,
}

/// A parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    NonIp,
    Malformed,
    NeighbourDiscovery,
    Ip {
        /// Source address, IPv4 mapped into IPv6.
        src: [u8; 16],
        v4: bool,
        proto: u8,
        dport: u16,
        tcp_syn: bool,
        transport: Transport,
        /// Offset of the IP header.
        l3: usize,
    },
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Parses a frame the way the program does.
pub fn parse(frame: &[u8]) -> Packet {
    if frame.len() < 14 {
        return Packet::Malformed;
    }
    let mut ethertype = be16(frame, 12);
    let mut off = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if off + 4 > frame.len() {
            return Packet::Malformed;
        }
        ethertype = be16(frame, off + 2);
        off += 4;
    }
    match ethertype {
        0x0800 => ipv4(frame, off),
        0x86dd => ipv6(frame, off),
        _ => Packet::NonIp,
    }
}

fn ipv4(f: &[u8], l3: usize) -> Packet {
    if l3 + 20 > f.len() {
        return Packet::Malformed;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let total = be16(f, l3 + 2) as usize;
    if f[l3] >> 4 != 4 || ihl < 20 || total < ihl || l3 + total > f.len() {
        return Packet::Malformed;
    }
    let fragment = be16(f, l3 + 6);
    let src = v4_mapped([f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]]);
    let packet = Packet::Ip {
        src,
        v4: true,
        proto: f[l3 + 9],
        dport: ANY_PORT,
        tcp_syn: false,
        transport: Transport::Ports,
        l3,
    };
    if fragment & 0x1fff != 0 {
        return packet;
    }
    transport(f, packet, l3 + ihl, l3 + total, fragment & 0x2000 != 0, 0)
}

fn ipv6(f: &[u8], l3: usize) -> Packet {
    if l3 + 40 > f.len() || f[l3] >> 4 != 6 {
        return Packet::Malformed;
    }
    let payload = be16(f, l3 + 4) as usize;
    if payload == 0 && f[l3 + 6] != 59 {
        return Packet::Malformed;
    }
    let end = l3 + 40 + payload;
    if end > f.len() {
        return Packet::Malformed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&f[l3 + 8..l3 + 24]);
    let mut next = f[l3 + 6];
    let with = |proto: u8, transport| Packet::Ip {
        src,
        v4: false,
        proto,
        dport: ANY_PORT,
        tcp_syn: false,
        transport,
        l3,
    };
    let mut first_fragment = false;
    let mut off = l3 + 40;
    // Within the datagram, or what its absence means.
    let short = |first: bool| {
        if first {
            Transport::Evasive
        } else {
            Transport::Truncated
        }
    };
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let (need, len_of): (usize, fn(&[u8]) -> usize) = match next {
            0 | 43 | 60 | 135 | 139 | 140 => (2, |h| (h[1] as usize + 1) * 8),
            44 => (8, |_| 8),
            51 => (2, |h| (h[1] as usize + 2) * 4),
            _ => {
                return transport(
                    f,
                    with(next, Transport::Ports),
                    off,
                    end,
                    first_fragment,
                    f[l3 + 7],
                )
            }
        };
        if off + need > end {
            return with(next, short(first_fragment));
        }
        let header = &f[off..off + need];
        if next == 44 {
            let offset_and_flags = be16(header, 2);
            if offset_and_flags >> 3 != 0 {
                return with(header[0], Transport::Unmatched);
            }
            first_fragment = offset_and_flags & 1 != 0;
        }
        off += len_of(header);
        next = header[0];
    }
    with(next, Transport::Evasive)
}

fn transport(
    f: &[u8],
    packet: Packet,
    l4: usize,
    end: usize,
    first_fragment: bool,
    hop_limit: u8,
) -> Packet {
    let Packet::Ip {
        src, v4, proto, l3, ..
    } = packet
    else {
        return packet;
    };
    let need = match proto {
        proto::TCP => 20,
        proto::UDP => 8,
        proto::ICMP | proto::ICMPV6 => 4,
        _ => return packet,
    };
    let ip = |dport, tcp_syn, transport| Packet::Ip {
        src,
        v4,
        proto,
        dport,
        tcp_syn,
        transport,
        l3,
    };
    if l4 + need > end {
        return ip(
            ANY_PORT,
            false,
            if first_fragment {
                Transport::Evasive
            } else {
                Transport::Truncated
            },
        );
    }
    let h = &f[l4..l4 + need];
    match proto {
        proto::TCP => ip(
            be16(h, 2),
            h[13] & 0x02 != 0 && h[13] & 0x10 == 0,
            Transport::Ports,
        ),
        proto::UDP => ip(be16(h, 2), false, Transport::Ports),
        proto::ICMPV6 if !v4 && hop_limit == 255 && h[1] == 0 && (133..=137).contains(&h[0]) => {
            Packet::NeighbourDiscovery
        }
        _ => ip(ANY_PORT, false, Transport::Ports),
    }
}

/// The verdict, and the frame as the program leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub pass: bool,
    pub frame: Vec<u8>,
}

/// The program's state: rules, access list, per-source windows.
pub struct Model {
    rules: Vec<Rule>,
    acl: Vec<(IpNet, AclEntry)>,
    sources: HashMap<SourceKey, WindowState>,
}

impl Model {
    /// `rules` as the data plane wrote them (ids assigned); `acl` as in the tries.
    pub fn new(rules: Vec<Rule>, acl: Vec<(IpNet, AclEntry)>) -> Model {
        Model {
            rules,
            acl,
            sources: HashMap::new(),
        }
    }

    /// Decides `frame` at time `now`, updating the windows as the program does.
    pub fn decide(&mut self, frame: &[u8], now: u64) -> Decision {
        let pass = |frame: &[u8]| Decision {
            pass: true,
            frame: frame.to_vec(),
        };
        let drop = || Decision {
            pass: false,
            frame: frame.to_vec(),
        };
        let Packet::Ip {
            src,
            v4,
            proto: protocol,
            dport,
            tcp_syn,
            transport,
            l3,
        } = parse(frame)
        else {
            return pass(frame);
        };
        if let Some(entry) = self.longest_match(src, v4) {
            if entry.kind == ACL_ALLOW {
                return pass(frame);
            }
            if entry.kind == ACL_DENY && (entry.expires_ns == 0 || now < entry.expires_ns) {
                return drop();
            }
        }
        match transport {
            Transport::Ports => {}
            Transport::Unmatched | Transport::Truncated => return pass(frame),
            Transport::Evasive => return drop(),
        }
        if !matches!(
            protocol,
            proto::TCP | proto::UDP | proto::ICMP | proto::ICMPV6
        ) {
            return pass(frame);
        }
        let find = |port| {
            self.rules
                .iter()
                .find(|r| r.proto == protocol && r.port == port)
                .copied()
        };
        let Some(rule) = find(dport).or_else(|| find(ANY_PORT)) else {
            return pass(frame);
        };
        let cost = match rule.unit() {
            Some(Unit::Packets) => 1,
            Some(Unit::Bytes) => frame.len() as u64,
            Some(Unit::NewConnections) if tcp_syn => 1,
            _ => return pass(frame),
        };
        let key = SourceKey {
            addr: src,
            rule_id: rule.id,
        };
        let state = self
            .sources
            .entry(key)
            .or_insert_with(|| WindowState::new(now));
        // SAFETY: a plain, exclusively borrowed WindowState.
        if unsafe { admit(state, now, rule.window, rule.limit, cost) } {
            return pass(frame);
        }
        // SAFETY: as above.
        unsafe { refuse(state, cost) };
        match rule.action() {
            Some(Action::Mark) => {
                let mut out = frame.to_vec();
                set_dscp(&mut out, l3, v4, rule.dscp);
                pass(&out)
            }
            Some(Action::DryRun) => pass(frame),
            _ => drop(),
        }
    }

    /// The longest-prefix entry covering `src`, as an LPM trie answers (an expired deny entry
    /// is still the answer: shorter prefixes are not consulted).
    fn longest_match(&self, src: [u8; 16], v4: bool) -> Option<AclEntry> {
        let addr = if v4 {
            IpAddr::from([src[12], src[13], src[14], src[15]])
        } else {
            IpAddr::from(src)
        };
        self.acl
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, e)| *e)
    }
}

/// DSCP rewrite as documented: ECN kept; the IPv4 header checksum updated incrementally
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), so a header that arrived with a wrong checksum
/// keeps it wrong by the same amount, as a router would.
fn set_dscp(frame: &mut [u8], l3: usize, v4: bool, dscp: u8) {
    let dscp = dscp & 0x3f;
    if v4 {
        let old_word = be16(frame, l3);
        frame[l3 + 1] = (dscp << 2) | (frame[l3 + 1] & 0x03);
        let new_word = be16(frame, l3);
        let old_check = be16(frame, l3 + 10);
        let mut sum = (!old_check as u32) + (!old_word as u32) + new_word as u32;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        let b1 = frame[l3 + 1];
        let ecn = (b1 >> 4) & 0x03;
        frame[l3] = 0x60 | (dscp >> 2);
        frame[l3 + 1] = ((dscp & 0x03) << 6) | (ecn << 4) | (b1 & 0x0f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(frame_tail: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(frame_tail);
        f
    }

    #[test]
    fn parses_a_udp_datagram() {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        ip.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        match parse(&udp4(&ip)) {
            Packet::Ip {
                v4: true,
                proto: 17,
                dport: 53,
                transport: Transport::Ports,
                l3: 14,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classifies_short_and_odd_frames() {
        assert_eq!(parse(&[0; 13]), Packet::Malformed);
        assert_eq!(parse(&[0; 60]), Packet::NonIp);
        // IPv4 with a total length past the frame.
        let ip = [
            0x45, 0, 0, 200, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        assert_eq!(parse(&udp4(&ip)), Packet::Malformed);
        // A first fragment holding 4 bytes of UDP header: evasive.
        let mut ip = vec![
            0x45, 0, 0, 24, 0, 0, 0x20, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        ip.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        assert!(matches!(
            parse(&udp4(&ip)),
            Packet::Ip {
                transport: Transport::Evasive,
                ..
            }
        ));
    }

    #[test]
    fn incremental_checksum_matches_a_full_one_on_a_valid_header() {
        let mut ip = vec![
            0x45, 0x03, 0, 28, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        let sum = |h: &[u8]| {
            let mut s: u32 = h
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
                .sum();
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        let check = !sum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let mut frame = udp4(&ip);
        set_dscp(&mut frame, 14, true, 46);
        assert_eq!(frame[15], (46 << 2) | 3);
        assert_eq!(sum(&frame[14..34]), 0xffff, "header still verifies");
    }
}
