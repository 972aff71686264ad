//! Header parsing with a bounds check before every read, as the verifier requires.

use aya_ebpf::programs::XdpContext;
use throttle_common::{proto, v4_mapped, ANY_PORT};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers walked; a longer chain is dropped as evasive.
const MAX_IPV6_EXT_HEADERS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What could be learnt beyond the IP header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `proto`, `dport` and `tcp_syn` are set. IPv4 later fragments land here too, with
    /// ANY_PORT: their protocol is trustworthy (reassembly keys on it), their ports absent.
    Ports,
    /// IPv6 later fragment: its next-header value is not used by reassembly, so no rule can
    /// be chosen by it.
    Unmatched,
    /// A header cut short by the frame or the datagram: malformed, left to the kernel.
    Truncated,
    /// An evasion pattern: a first fragment too short for its transport header (RFC 1858),
    /// or an IPv6 header chain longer than the program walks. Rules cannot see what it carries.
    Evasive,
}

#[derive(Clone, Copy)]
pub struct Headers {
    pub family: Family,
    /// Source address; IPv4 as `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    pub proto: u8,
    /// Destination port (host order); ANY_PORT for ICMP and for later fragments.
    pub dport: u16,
    /// TCP SYN without ACK: a new connection.
    pub tcp_syn: bool,
    pub transport: Transport,
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
    /// Link or IP header malformed or cut short: no trustworthy source address.
    Malformed,
    NeighbourDiscovery,
    Ip(Headers),
}

/// Pointer to `len` bytes at `off`, or None if the packet is shorter.
#[inline(always)]
fn bytes(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    // A volatile read of data_end: otherwise LLVM may prove this check redundant from earlier
    // ones (e.g. "within the datagram, and the datagram is within the frame") and drop it,
    // and the verifier, which needs each access checked against data_end, rejects the program.
    // SAFETY: `ctx.ctx` is the program's valid xdp_md.
    let end = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ctx).data_end)) } as usize;
    if start + off + len > end {
        return None;
    }
    Some((start + off) as *mut u8)
}

/// `len` bytes at `off`, within both the frame and the IP datagram ending at `end`; else
/// what their absence means.
#[inline(always)]
fn datagram_bytes(ctx: &XdpContext, off: usize, len: usize, end: usize, first_fragment: bool) -> Result<*mut u8, Transport> {
    if off + len > end {
        return Err(if first_fragment { Transport::Evasive } else { Transport::Truncated });
    }
    bytes(ctx, off, len).ok_or(Transport::Truncated)
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
    let fragment = be16_at(ip, 6);
    let src = v4_mapped([u8_at(ip, 12), u8_at(ip, 13), u8_at(ip, 14), u8_at(ip, 15)]);
    let h = Headers {
        family: Family::V4,
        src,
        proto: u8_at(ip, 9),
        dport: ANY_PORT,
        tcp_syn: false,
        transport: Transport::Ports,
        l3,
    };
    if fragment & 0x1fff != 0 {
        // Later fragments carry no transport header: only wildcard rules can match them.
        return Parsed::Ip(h);
    }
    let more_fragments = fragment & 0x2000 != 0;
    transport(ctx, l3 + ihl, l3 + total, more_fragments, 0, h)
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
    let end = l3 + 40 + payload;
    if bytes(ctx, l3, 40 + payload).is_none() {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    for (i, b) in src.iter_mut().enumerate() {
        *b = u8_at(ip, 8 + i);
    }
    let hop_limit = u8_at(ip, 7);
    let mut h = Headers {
        family: Family::V6,
        src,
        proto: u8_at(ip, 6),
        dport: ANY_PORT,
        tcp_syn: false,
        transport: Transport::Ports,
        l3,
    };
    let mut first_fragment = false;
    let mut off = l3 + 40;
    // One more turn than headers walked, so a chain of exactly the maximum reaches transport.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let (next, len) = match h.proto {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8.
            0 | 43 | 60 | 135 | 139 | 140 => match datagram_bytes(ctx, off, 2, end, first_fragment) {
                Ok(ext) => (u8_at(ext, 0), (u8_at(ext, 1) as usize + 1) * 8),
                Err(t) => return with_transport(h, t),
            },
            // Fragment: fixed 8 bytes; later fragments have no transport header.
            44 => match datagram_bytes(ctx, off, 8, end, first_fragment) {
                Ok(ext) => {
                    let offset_and_flags = be16_at(ext, 2);
                    if offset_and_flags >> 3 != 0 {
                        return with_transport(h, Transport::Unmatched);
                    }
                    first_fragment = offset_and_flags & 1 != 0;
                    (u8_at(ext, 0), 8)
                }
                Err(t) => return with_transport(h, t),
            },
            // Authentication header: (len + 2) * 4.
            51 => match datagram_bytes(ctx, off, 2, end, first_fragment) {
                Ok(ext) => (u8_at(ext, 0), (u8_at(ext, 1) as usize + 2) * 4),
                Err(t) => return with_transport(h, t),
            },
            _ => return transport(ctx, off, end, first_fragment, hop_limit, h),
        };
        h.proto = next;
        off += len;
    }
    with_transport(h, Transport::Evasive)
}

#[inline(always)]
fn with_transport(mut h: Headers, t: Transport) -> Parsed {
    h.transport = t;
    Parsed::Ip(h)
}

/// Reads the transport header at `l4`, within the datagram ending at `end`. Each arm checks its
/// own constant length: a shared, computed length loses the verifier's proof of the bounds.
#[inline(always)]
fn transport(ctx: &XdpContext, l4: usize, end: usize, first_fragment: bool, hop_limit: u8, mut h: Headers) -> Parsed {
    match h.proto {
        proto::TCP => match datagram_bytes(ctx, l4, 20, end, first_fragment) {
            Ok(tcp) => {
                h.dport = be16_at(tcp, 2);
                let flags = u8_at(tcp, 13);
                h.tcp_syn = flags & 0x02 != 0 && flags & 0x10 == 0;
            }
            Err(t) => h.transport = t,
        },
        proto::UDP => match datagram_bytes(ctx, l4, 8, end, first_fragment) {
            Ok(udp) => h.dport = be16_at(udp, 2),
            Err(t) => h.transport = t,
        },
        proto::ICMP => {
            if let Err(t) = datagram_bytes(ctx, l4, 4, end, first_fragment) {
                h.transport = t;
            }
        }
        proto::ICMPV6 => match datagram_bytes(ctx, l4, 4, end, first_fragment) {
            // Router/neighbour solicitation and advertisement, redirect: never limited. Only
            // as RFC 4861 has them (IPv6, hop limit 255, code 0); anything else as usual.
            Ok(icmp)
                if h.family == Family::V6
                    && hop_limit == 255
                    && u8_at(icmp, 1) == 0
                    && (133..=137).contains(&u8_at(icmp, 0)) =>
            {
                return Parsed::NeighbourDiscovery
            }
            Ok(_) => {}
            Err(t) => h.transport = t,
        },
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
