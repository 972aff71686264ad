//! Header parsing with a bounds check before every read, as the verifier requires.

use aya_ebpf::programs::XdpContext;
use throttle_common::{proto, v4_mapped, ANY_PORT};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers walked before giving up (counted as malformed, passed).
const MAX_IPV6_EXT_HEADERS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy)]
pub struct Headers {
    pub family: Family,
    /// Source address; IPv4 as `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    pub proto: u8,
    /// Destination port (host order); ANY_PORT for ICMP and for non-first fragments.
    pub dport: u16,
    /// TCP SYN without ACK: a new connection.
    pub tcp_syn: bool,
    /// Offset of the IP header.
    pub l3: usize,
}

impl Headers {
    #[inline(always)]
    pub fn v4_src(&self) -> [u8; 4] {
        [self.src[12], self.src[13], self.src[14], self.src[15]]
    }
}

pub enum Parsed {
    NonIp,
    Malformed,
    NeighbourDiscovery,
    Ip(Headers),
}

/// Pointer to `len` bytes at `off`, or None if the packet is shorter.
#[inline(always)]
fn bytes(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

#[inline(always)]
fn u8_at(p: *mut u8, i: usize) -> u8 {
    // SAFETY: callers checked `p .. p + i` with `bytes` first.
    unsafe { *p.add(i) }
}

#[inline(always)]
fn be16_at(p: *mut u8, i: usize) -> u16 {
    u16::from_be_bytes([u8_at(p, i), u8_at(p, i + 1)])
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = bytes(ctx, 0, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    let mut ethertype = be16_at(eth, 12);
    let mut off = ETH_HLEN;
    // Up to two tags: 802.1Q, or 802.1ad outer + 802.1Q inner (QinQ).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = bytes(ctx, off, 4) else {
            return Parsed::Malformed;
        };
        ethertype = be16_at(tag, 2);
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = bytes(ctx, l3, 20) else {
        return Parsed::Malformed;
    };
    let b0 = u8_at(ip, 0);
    let ihl = ((b0 & 0x0f) as usize) * 4;
    let total = be16_at(ip, 2) as usize;
    if b0 >> 4 != 4 || ihl < 20 || total < ihl {
        return Parsed::Malformed;
    }
    // The whole datagram must be there: a shorter frame is truncated (longer is link padding).
    if bytes(ctx, l3, total).is_none() || bytes(ctx, l3, ihl).is_none() {
        return Parsed::Malformed;
    }
    let frag_offset = be16_at(ip, 6) & 0x1fff;
    let src = v4_mapped([u8_at(ip, 12), u8_at(ip, 13), u8_at(ip, 14), u8_at(ip, 15)]);
    let h = Headers {
        family: Family::V4,
        src,
        proto: u8_at(ip, 9),
        dport: ANY_PORT,
        tcp_syn: false,
        l3,
    };
    if frag_offset != 0 {
        // Later fragments carry no transport header: only wildcard rules can match them.
        return Parsed::Ip(h);
    }
    transport(ctx, l3 + ihl, h)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = bytes(ctx, l3, 40) else {
        return Parsed::Malformed;
    };
    if u8_at(ip, 0) >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload = be16_at(ip, 4) as usize;
    // Payload length 0 would be a jumbogram, which never travels over Ethernet.
    if payload == 0 && u8_at(ip, 6) != 59 {
        return Parsed::Malformed;
    }
    if bytes(ctx, l3, 40 + payload).is_none() {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    for (i, b) in src.iter_mut().enumerate() {
        *b = u8_at(ip, 8 + i);
    }
    let mut h = Headers { family: Family::V6, src, proto: u8_at(ip, 6), dport: ANY_PORT, tcp_syn: false, l3 };
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match h.proto {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let Some(ext) = bytes(ctx, off, 2) else {
                    return Parsed::Malformed;
                };
                h.proto = u8_at(ext, 0);
                (u8_at(ext, 1) as usize + 1) * 8
            }
            // Fragment: fixed 8 bytes; later fragments have no transport header.
            44 => {
                let Some(ext) = bytes(ctx, off, 8) else {
                    return Parsed::Malformed;
                };
                h.proto = u8_at(ext, 0);
                if be16_at(ext, 2) >> 3 != 0 {
                    return Parsed::Ip(h);
                }
                8
            }
            // Authentication header: (len + 2) * 4.
            51 => {
                let Some(ext) = bytes(ctx, off, 2) else {
                    return Parsed::Malformed;
                };
                h.proto = u8_at(ext, 0);
                (u8_at(ext, 1) as usize + 2) * 4
            }
            _ => return transport(ctx, off, h),
        };
        off += len;
    }
    Parsed::Malformed
}

#[inline(always)]
fn transport(ctx: &XdpContext, l4: usize, mut h: Headers) -> Parsed {
    match h.proto {
        proto::TCP => {
            let Some(tcp) = bytes(ctx, l4, 20) else {
                return Parsed::Malformed;
            };
            h.dport = be16_at(tcp, 2);
            let flags = u8_at(tcp, 13);
            h.tcp_syn = flags & 0x02 != 0 && flags & 0x10 == 0;
        }
        proto::UDP => {
            let Some(udp) = bytes(ctx, l4, 8) else {
                return Parsed::Malformed;
            };
            h.dport = be16_at(udp, 2);
        }
        proto::ICMP => {
            if bytes(ctx, l4, 4).is_none() {
                return Parsed::Malformed;
            }
        }
        proto::ICMPV6 => {
            let Some(icmp) = bytes(ctx, l4, 4) else {
                return Parsed::Malformed;
            };
            // Router/neighbour solicitation and advertisement, redirect: never limited.
            if (133..=137).contains(&u8_at(icmp, 0)) {
                return Parsed::NeighbourDiscovery;
            }
        }
        _ => {}
    }
    Parsed::Ip(h)
}

/// Rewrites the DSCP bits (keeping ECN), with the IPv4 header checksum updated incrementally
/// (RFC 1624). IPv6 has no header checksum and the traffic class is not in any L4 pseudo-header.
#[inline(always)]
pub fn set_dscp(ctx: &XdpContext, h: &Headers, dscp: u8) {
    let Some(ip) = bytes(ctx, h.l3, 12) else {
        return;
    };
    let dscp = dscp & 0x3f;
    // SAFETY: the 12 bytes at `ip` were bounds-checked just above.
    unsafe {
        match h.family {
            Family::V4 => {
                let old_word = be16_at(ip, 0);
                let tos = (dscp << 2) | (*ip.add(1) & 0x03);
                *ip.add(1) = tos;
                let new_word = be16_at(ip, 0);
                let check = be16_at(ip, 10);
                // HC' = ~(~HC + ~m + m')
                let mut sum = (!check as u32) + (!old_word as u32) + new_word as u32;
                sum = (sum & 0xffff) + (sum >> 16);
                sum = (sum & 0xffff) + (sum >> 16);
                let new_check = !(sum as u16);
                *ip.add(10) = (new_check >> 8) as u8;
                *ip.add(11) = new_check as u8;
            }
            Family::V6 => {
                let b1 = *ip.add(1);
                let ecn = (b1 >> 4) & 0x03;
                *ip.add(0) = 0x60 | (dscp >> 2);
                *ip.add(1) = ((dscp & 0x03) << 6) | (ecn << 4) | (b1 & 0x0f);
            }
        }
    }
}
