//! throttle's XDP program: per-source sliding-window rate limiting before the network stack.
//!
//! A packet's way: Ethernet → up to two VLAN tags → IPv4 (with options) or IPv6 (bounded walk
//! over extension headers) → TCP / UDP / ICMP / ICMPv6. Then: allowlist → PASS, denylist →
//! DROP, rule lookup by (protocol, destination port) with a per-protocol wildcard, and the
//! shared sliding window of `throttle_common::window` per (source, rule).
//!
//! Anything not IP passes; so does IPv6 neighbour discovery, always. Truncated or malformed
//! headers pass and are counted: the kernel stack decides about them, XDP never aborts.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
    Global,
};
use parse::{Family, Headers, Parsed, Transport};
use throttle_common::{
    admit, refuse, rule_index, rule_protocol, rule_slot_index, AclEntry, Action, Counters,
    EventBudget, OverQuotaEvent, Rule, Settings, SourceKey, Unit, WindowState, ACL_ALLOW,
    ACL_DENY, ANY_PORT, DEFAULT_MAX_RULES, DEFAULT_MAX_SOURCES, EVENTS_PER_SECOND_PER_CPU, MAX_CIDRS, MAX_RULES,
    RULE_INDEX_ENTRIES, RULE_SLOTS,
};

/// Set to 1 at load time by tests: time then comes from `Settings::clock_override_ns`.
#[no_mangle]
static TEST_CLOCK: Global<u8> = Global::new(0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// Rule id per (slot, protocol, destination port); port 0 holds the protocol's wildcard rule.
/// Arrays, not hashes: the verifier inlines array lookups.
#[map]
static RULE_INDEX: Array<u16> = Array::with_max_entries(RULE_INDEX_ENTRIES, 0);
#[map]
static RULES: Array<Rule> = Array::with_max_entries(RULE_SLOTS * MAX_RULES, 0);
/// Shared across CPUs on purpose: a per-CPU window would let a source have limit × ncpus.
#[map]
static SOURCES: LruHashMap<SourceKey, WindowState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);
/// Sized by the controller at load time (`max_rules`): per-CPU memory grows with it. Ids past
/// its end find no entry and go uncounted, never out of bounds.
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_RULES, 0);
/// Allowlist and denylist in one trie per family: one longest-prefix lookup per packet.
/// Twice the configurable entries: a reload writes the new set before removing the old one.
#[map]
static ACL_V4: LpmTrie<[u8; 4], AclEntry> = LpmTrie::with_max_entries(2 * MAX_CIDRS, 0);
#[map]
static ACL_V6: LpmTrie<[u8; 16], AclEntry> = LpmTrie::with_max_entries(2 * MAX_CIDRS, 0);

/// Over-quota events for the controller (logged, counted).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn throttle(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match parse::parse(&ctx) {
        Parsed::NonIp => pass(0, len, |c| c.non_ip += 1),
        Parsed::Malformed => pass(0, len, |c| c.malformed += 1),
        Parsed::NeighbourDiscovery => pass(0, len, |_| {}),
        Parsed::Ip(h) => decide(&ctx, &h, len),
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext, h: &Headers, len: u64) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return pass(0, len, |_| {});
    };
    // The clock is read only when a decision needs it.
    let now = || {
        if TEST_CLOCK.load() != 0 {
            settings.clock_override_ns
        } else {
            // SAFETY: a plain helper call without arguments.
            unsafe { bpf_ktime_get_ns() }
        }
    };
    if settings.acl_entries != 0 {
        if let Some(entry) = acl_lookup(h) {
            if entry.kind == ACL_ALLOW {
                return pass(0, len, |c| c.allowlisted += 1);
            }
            if entry.kind == ACL_DENY && (entry.expires_ns == 0 || now() < entry.expires_ns) {
                return drop(0, len, |c| c.denylisted += 1);
            }
        }
    }

    match h.transport {
        Transport::Ports => {}
        Transport::Unmatched => return pass(0, len, |_| {}),
        Transport::Truncated => return pass(0, len, |c| c.malformed += 1),
        Transport::Evasive => return drop(0, len, |c| c.evasive += 1),
    }
    let Some(protocol) = rule_protocol(h.proto) else {
        return pass(0, len, |_| {});
    };
    // Read once: the whole decision uses one slot, whatever the controller switches meanwhile.
    // SAFETY: an aligned read of a map value the program holds a reference to.
    let slot = unsafe { core::ptr::read_volatile(&settings.active_slot) };
    let id = match RULE_INDEX.get(rule_index(slot, protocol, h.dport)) {
        Some(&id) if id != 0 => id,
        _ => match RULE_INDEX.get(rule_index(slot, protocol, ANY_PORT)) {
            Some(&id) if id != 0 => id,
            _ => return pass(0, len, |_| {}),
        },
    } as u32;
    // A cleared entry (limit 0) or another rule's: the controller is rewriting this slot.
    let rule = match RULES.get(rule_slot_index(slot, id)) {
        Some(r) if r.limit != 0 && r.id == id => r,
        _ => return pass(0, len, |_| {}),
    };
    let cost = match rule.unit() {
        Some(Unit::Packets) => 1,
        Some(Unit::Bytes) => len,
        Some(Unit::NewConnections) if h.tcp_syn => 1,
        _ => return pass(id, len, |_| {}),
    };

    let now = now();
    let source = SourceKey { addr: h.src, rule_id: id };
    let state = match SOURCES.get_ptr_mut(&source) {
        Some(s) => s,
        None => {
            // A new source whose first units fit is inserted already counted: no second
            // lookup. Another CPU may insert the same source first; then ours fails and the
            // packet goes through theirs.
            let first = WindowState::admitted(now, cost, rule.limit);
            let fresh = first.unwrap_or(WindowState::new(now));
            if SOURCES.insert(&source, &fresh, BPF_NOEXIST as u64).is_ok() {
                if first.is_some() {
                    return pass(id, len, |c| c.new_sources += 1);
                }
                bump(id, |c| c.new_sources += 1);
            }
            match SOURCES.get_ptr_mut(&source) {
                Some(s) => s,
                None => return pass(id, len, |_| {}),
            }
        }
    };
    // SAFETY: `state` points at a live map value; all CPUs touch it only through
    // `admit` and `refuse`.
    if unsafe { admit(state, now, rule.window, rule.limit, cost) } {
        return pass(id, len, |_| {});
    }
    // SAFETY: as above.
    if unsafe { refuse(state, cost) } {
        report(&source, rule.action, now, state);
    }
    match rule.action() {
        Some(Action::Mark) => {
            parse::set_dscp(ctx, h, rule.dscp);
            pass(id, len, |c| c.marked += 1)
        }
        Some(Action::DryRun) => pass(id, len, |c| c.dry_run += 1),
        _ => drop(id, len, |_| {}),
    }
}

/// Sends an over-quota event, within this CPU's budget per second.
#[inline(always)]
fn report(source: &SourceKey, action: u8, now: u64, state: *mut WindowState) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, and XDP does not preempt itself on one CPU.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.second_start_ns) >= 1_000_000_000 {
        budget.second_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= EVENTS_PER_SECOND_PER_CPU {
        return;
    }
    budget.sent += 1;
    // SAFETY: reads of the state's plain fields; a torn value only blurs a log line.
    let (window_start_ns, refused) = unsafe { ((*state).start_ns, (*state).refused) };
    let event = OverQuotaEvent {
        addr: source.addr,
        rule_id: source.rule_id,
        action,
        _pad: [0; 3],
        window_start_ns,
        refused,
    };
    // A full ring buffer drops the event: the counters still have the drop.
    let _ = EVENTS.output::<OverQuotaEvent>(&event, 0);
}

#[inline(always)]
fn acl_lookup(h: &Headers) -> Option<&'static AclEntry> {
    match h.family {
        Family::V4 => ACL_V4.get(Key::new(32, h.v4_src())),
        Family::V6 => ACL_V6.get(Key::new(128, h.src)),
    }
}

#[inline(always)]
fn bump(index: u32, f: impl FnOnce(&mut Counters)) {
    if index >= MAX_RULES {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, and XDP does not preempt itself on one CPU.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
fn pass(index: u32, len: u64, f: impl FnOnce(&mut Counters)) -> u32 {
    bump(index, |c| {
        c.passed += 1;
        c.bytes_passed += len;
        f(c)
    });
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(index: u32, len: u64, f: impl FnOnce(&mut Counters)) -> u32 {
    bump(index, |c| {
        c.dropped += 1;
        c.bytes_dropped += len;
        f(c)
    });
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
