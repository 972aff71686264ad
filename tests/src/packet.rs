//! Crafting test frames: Ethernet, VLAN tags, IPv4 (with options, fragments), IPv6 (with
//! extension headers), TCP, UDP, ICMP, ICMPv6. Checksums are computed so that rewritten
//! headers can be checked.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum Ip {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: Vec<u8>,
        frag_offset: u16,
        more_fragments: bool,
        tos: u8,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ext: Vec<Ext>,
        tclass: u8,
        flow: u32,
        hop_limit: u8,
    },
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    /// Destination options of (n + 1) * 8 bytes.
    DestOptsLong(u8),
    Routing,
    /// Authentication header of (n + 2) * 4 bytes.
    Auth(u8),
    /// Fragment header with this fragment offset (in 8-byte units) and the M (more) flag.
    Fragment(u16),
    FirstFragment,
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment(_) | Ext::FirstFragment => 44,
            Ext::Auth(_) => 51,
            Ext::DestOpts | Ext::DestOptsLong(_) => 60,
        }
    }

    fn len(&self) -> usize {
        match self {
            Ext::DestOptsLong(n) => (*n as usize + 1) * 8,
            Ext::Auth(n) => (*n as usize + 2) * 4,
            _ => 8,
        }
    }
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        dport: u16,
        flags: u8,
    },
    Udp {
        dport: u16,
    },
    Icmp {
        ty: u8,
    },
    Icmpv6 {
        ty: u8,
    },
    /// Any other protocol, with a raw body.
    Other {
        proto: u8,
    },
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
            L4::Icmpv6 { .. } => 58,
            L4::Other { proto } => *proto,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Packet {
    /// VLAN tags, outermost first, as TPIDs (VID 100 + position).
    pub vlans: Vec<u16>,
    pub ip: Ip,
    pub l4: L4,
    pub payload: usize,
}

impl Packet {
    pub fn v4(src: [u8; 4], l4: L4) -> Packet {
        Packet {
            vlans: vec![],
            ip: Ip::V4 {
                src: src.into(),
                dst: Ipv4Addr::new(198, 18, 0, 1),
                options: vec![],
                frag_offset: 0,
                more_fragments: false,
                tos: 0,
            },
            l4,
            payload: 18,
        }
    }

    pub fn v6(src: Ipv6Addr, l4: L4) -> Packet {
        Packet {
            vlans: vec![],
            ip: Ip::V6 {
                src,
                dst: "2001:db8::1".parse().unwrap(),
                ext: vec![],
                tclass: 0,
                flow: 0,
                hop_limit: 64,
            },
            l4,
            payload: 18,
        }
    }

    pub fn with_vlans(mut self, tpids: &[u16]) -> Packet {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn with_payload(mut self, len: usize) -> Packet {
        self.payload = len;
        self
    }

    /// IPv4 options (padded with NOPs to a multiple of 4 bytes).
    pub fn with_v4_options(mut self, len: usize) -> Packet {
        if let Ip::V4 { options, .. } = &mut self.ip {
            *options = vec![1; len.div_ceil(4) * 4];
        }
        self
    }

    pub fn with_v4_fragment_offset(mut self, offset: u16) -> Packet {
        if let Ip::V4 { frag_offset, .. } = &mut self.ip {
            *frag_offset = offset;
        }
        self
    }

    /// First fragment of a fragmented IPv4 datagram (MF set, offset 0).
    pub fn with_v4_more_fragments(mut self) -> Packet {
        if let Ip::V4 { more_fragments, .. } = &mut self.ip {
            *more_fragments = true;
        }
        self
    }

    /// IPv4 TOS / IPv6 traffic class.
    pub fn with_traffic_class(mut self, value: u8) -> Packet {
        match &mut self.ip {
            Ip::V4 { tos, .. } => *tos = value,
            Ip::V6 { tclass, .. } => *tclass = value,
        }
        self
    }

    pub fn with_v6_flow_label(mut self, label: u32) -> Packet {
        if let Ip::V6 { flow, .. } = &mut self.ip {
            *flow = label & 0xfffff;
        }
        self
    }

    pub fn with_hop_limit(mut self, limit: u8) -> Packet {
        if let Ip::V6 { hop_limit, .. } = &mut self.ip {
            *hop_limit = limit;
        }
        self
    }

    pub fn with_v6_ext(mut self, headers: Vec<Ext>) -> Packet {
        if let Ip::V6 { ext, .. } = &mut self.ip {
            *ext = headers;
        }
        self
    }

    /// Offsets where a header ends: truncating there (or anywhere before the end) leaves the
    /// next header incomplete.
    pub fn boundaries(&self) -> Vec<usize> {
        let mut b = vec![14];
        let mut off = 14;
        for _ in &self.vlans {
            off += 4;
            b.push(off);
        }
        off += match &self.ip {
            Ip::V4 { options, .. } => 20 + options.len(),
            Ip::V6 { .. } => 40,
        };
        b.push(off);
        if let Ip::V6 { ext, .. } = &self.ip {
            for e in ext {
                off += e.len();
                b.push(off);
            }
        }
        off += self.l4_header_len();
        b.push(off);
        b
    }

    fn l4_header_len(&self) -> usize {
        match self.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } => 8,
            L4::Icmp { .. } | L4::Icmpv6 { .. } => 8,
            L4::Other { .. } => 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { dport, flags } => {
                l4.extend_from_slice(&40000u16.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
            }
            L4::Udp { dport } => {
                l4.extend_from_slice(&40000u16.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            L4::Icmp { ty } | L4::Icmpv6 { ty } => l4.extend_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]),
            L4::Other { .. } => {}
        }
        l4.extend(std::iter::repeat_n(0xab, self.payload));

        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (i, tpid) in self.vlans.iter().enumerate() {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                options,
                frag_offset,
                more_fragments,
                tos,
            } => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = (20 + options.len()) / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let mut h = vec![0x40 | ihl as u8, *tos];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                let flags = if *more_fragments { 0x2000 } else { 0 };
                h.extend_from_slice(&((frag_offset & 0x1fff) | flags).to_be_bytes());
                h.extend_from_slice(&[64, self.l4.proto(), 0, 0]);
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                h.extend_from_slice(options);
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                frame.extend_from_slice(&h);
            }
            Ip::V6 {
                src,
                dst,
                ext,
                tclass,
                flow,
                hop_limit,
            } => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut exts = Vec::new();
                for (i, e) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(self.l4.proto(), Ext::number);
                    match e {
                        Ext::Fragment(offset) => {
                            exts.extend_from_slice(&[next, 0]);
                            exts.extend_from_slice(&(offset << 3).to_be_bytes());
                            exts.extend_from_slice(&[0, 0, 0, 7]);
                        }
                        Ext::FirstFragment => exts.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 7]),
                        Ext::DestOptsLong(n) => {
                            // PadN filling the header after its two fixed bytes.
                            let len = e.len();
                            exts.extend_from_slice(&[next, *n, 1, (len - 4) as u8]);
                            exts.extend(std::iter::repeat_n(0, len - 4));
                        }
                        Ext::Auth(n) => {
                            exts.extend_from_slice(&[next, *n]);
                            exts.extend(std::iter::repeat_n(0, e.len() - 2));
                        }
                        _ => exts.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                let first = ext.first().map_or(self.l4.proto(), Ext::number);
                let payload_len = (exts.len() + l4.len()) as u16;
                let word = 6u32 << 28 | (*tclass as u32) << 20 | flow;
                frame.extend_from_slice(&word.to_be_bytes());
                frame.extend_from_slice(&payload_len.to_be_bytes());
                frame.extend_from_slice(&[first, *hop_limit]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&exts);
            }
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

/// An ARP request: not IP.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 2, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1,
    ]);
    f
}

/// Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = Packet::v4([198, 18, 0, 2], L4::Udp { dport: 53 })
            .with_v4_options(4)
            .build();
        assert_eq!(checksum(&f[14..14 + 24]), 0);
        assert_eq!(f[14], 0x46);
    }

    #[test]
    fn boundaries_end_at_the_transport_header() {
        let p = Packet::v6(
            "2001:db8::2".parse().unwrap(),
            L4::Tcp {
                dport: 443,
                flags: TCP_SYN,
            },
        )
        .with_vlans(&[TPID_8021AD, TPID_8021Q])
        .with_v6_ext(vec![Ext::HopByHop, Ext::Fragment(0)]);
        assert_eq!(p.boundaries(), vec![14, 18, 22, 62, 70, 78, 98]);
        assert_eq!(p.build().len(), 98 + 18);
    }
}
