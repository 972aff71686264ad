//! Layouts of the BPF maps, as seen by both the kernel program and the controller.
//!
//! Every struct is `#[repr(C)]` with explicit padding so both sides agree byte for byte. A change
//! to any of them must bump [`SCHEMA_VERSION`]: the controller refuses to adopt pinned maps of
//! another version.

/// Version of the layouts below.
pub const SCHEMA_VERSION: u32 = 2;

/// Rule ids are `1..MAX_RULES` (they fit the u16 of `RULE_INDEX`); id 0 holds the counters of
/// packets no rule matched. `RULES` is always this large (it is not per CPU); the per-CPU
/// `COUNTERS` array is sized at load time by the config's `max_rules`.
pub const MAX_RULES: u32 = 16_384;
/// Default `max_rules`: room for 1023 rules, 96 KiB of counters per CPU.
pub const DEFAULT_MAX_RULES: u32 = 1024;
/// Rules are written into the inactive one of two slots, then the slot is switched in one write,
/// so no packet sees a half-written rule set.
pub const RULE_SLOTS: u32 = 2;
/// Protocols rules can match, in `RULE_INDEX` order: TCP, UDP, ICMP, ICMPv6.
pub const RULE_PROTOCOLS: u32 = 4;
/// Entries of `RULE_INDEX`: a rule id for every (slot, protocol, destination port).
pub const RULE_INDEX_ENTRIES: u32 = RULE_SLOTS * RULE_PROTOCOLS * 65_536;
/// Entries a config may have per address family, allow and deny together (the tries hold
/// twice that: during a reload the new entries are in before the old ones go).
pub const MAX_CIDRS: u32 = 65_536;
/// Default size of the per-(source, rule) state table.
pub const DEFAULT_MAX_SOURCES: u32 = 1 << 20;

/// Map names, shared so the controller never misspells one.
pub mod names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const RULE_INDEX: &str = "RULE_INDEX";
    pub const RULES: &str = "RULES";
    pub const SOURCES: &str = "SOURCES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ACL_V4: &str = "ACL_V4";
    pub const ACL_V6: &str = "ACL_V6";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// Load-time constant: when non-zero, the program reads time from `Settings::clock_override_ns`.
    pub const TEST_CLOCK: &str = "TEST_CLOCK";
    /// Name of the XDP program in the object.
    pub const PROGRAM: &str = "throttle";
}

/// IP protocol numbers the rules can match.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Port value of a rule that matches every destination port of its protocol.
pub const ANY_PORT: u16 = 0;

/// Position of a protocol in `RULE_INDEX`, or None if no rule can match it.
#[inline(always)]
pub fn rule_protocol(protocol: u8) -> Option<u32> {
    match protocol {
        proto::TCP => Some(0),
        proto::UDP => Some(1),
        proto::ICMP => Some(2),
        proto::ICMPV6 => Some(3),
        _ => None,
    }
}

/// Index into `RULE_INDEX` (an array: the lookup is inlined by the verifier, no hashing).
/// Port [`ANY_PORT`] holds the protocol's wildcard rule.
#[inline(always)]
pub fn rule_index(slot: u32, protocol: u32, port: u16) -> u32 {
    (slot & 1) << 18 | (protocol & 3) << 16 | port as u32
}

/// Index into `RULES` of rule `id` in `slot`.
#[inline(always)]
pub fn rule_slot_index(slot: u32, id: u32) -> u32 {
    (slot & 1) * MAX_RULES + id % MAX_RULES
}

/// What a rule counts.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Packets = 0,
    /// Bytes of the whole frame, as seen by XDP.
    Bytes = 1,
    /// New TCP connections: SYN without ACK. Other packets of the rule pass uncounted.
    NewConnections = 2,
}

/// What happens to traffic over the quota.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop = 0,
    /// Rewrite DSCP to `Rule::dscp` (checksum fixed) and pass.
    Mark = 1,
    /// Count only: what would have been dropped is counted as `dry_run` and passed.
    DryRun = 2,
}

/// Value of the `RULES` array; an all-zero entry (limit 0) is no rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Units per window, at most [`crate::window::MAX_LIMIT`].
    pub limit: u64,
    /// Window length, 1 ns ..= [`crate::window::MAX_WINDOW_NS`], with its reciprocal.
    pub window: crate::Window,
    /// 1..MAX_RULES: index of the rule's counters and part of the source key.
    pub id: u32,
    /// [`Unit`] as u8.
    pub unit: u8,
    /// [`Action`] as u8.
    pub action: u8,
    /// DSCP (0..=63) written by [`Action::Mark`].
    pub dscp: u8,
    /// What the rule matches: IP protocol and destination port (or [`ANY_PORT`]), kept so the
    /// controller can clear the rule's `RULE_INDEX` entry.
    pub proto: u8,
    pub port: u16,
    pub _pad: [u8; 6],
    /// Identity of the rule across reloads (a hash of its name, unit and window, made by the
    /// controller): a rule that keeps it keeps its id, and so its sources' windows.
    pub identity: u64,
}

impl Rule {
    pub fn unit(&self) -> Option<Unit> {
        match self.unit {
            0 => Some(Unit::Packets),
            1 => Some(Unit::Bytes),
            2 => Some(Unit::NewConnections),
            _ => None,
        }
    }
    pub fn action(&self) -> Option<Action> {
        match self.action {
            0 => Some(Action::Drop),
            1 => Some(Action::Mark),
            2 => Some(Action::DryRun),
            _ => None,
        }
    }
}

/// Key of the `SOURCES` LRU map: one sliding window per source address and rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// IPv6 address, or an IPv4 address mapped as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    pub rule_id: u32,
}

/// Maps an IPv4 address into the IPv6 form used in [`SourceKey`].
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// The single value of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Slot of the active rule set.
    pub active_slot: u32,
    /// Number of access-list entries; an empty list costs no lookup.
    pub acl_entries: u32,
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Interface the pinned link is attached to (0 until attached).
    pub ifindex: u32,
    /// Generation of the applied rule set, reported by the controller.
    pub generation: u64,
    /// Time seen by the program when it was loaded with `TEST_CLOCK` set; ignored otherwise.
    pub clock_override_ns: u64,
    /// [`ATTACH_DRIVER`] or [`ATTACH_SKB`] once attached.
    pub attach_mode: u32,
    /// Where the controller looks for the next free rule id: ids are handed out round-robin so
    /// a removed rule's id (and the windows still keyed by it) is not reused soon.
    pub next_rule_id: u32,
}

/// [`Settings::attach_mode`]: native XDP.
pub const ATTACH_DRIVER: u32 = 1;
/// [`Settings::attach_mode`]: generic (skb) XDP.
pub const ATTACH_SKB: u32 = 2;

/// [`AclEntry::kind`]: never limited.
pub const ACL_ALLOW: u8 = 1;
/// [`AclEntry::kind`]: always dropped (until `expires_ns`).
pub const ACL_DENY: u8 = 2;

/// [`AclEntry::origin`]: from the config file.
pub const ORIGIN_CONFIG: u8 = 0;
/// [`AclEntry::origin`]: added through the admin API.
pub const ORIGIN_API: u8 = 1;

/// Value of the `ACL_V4` / `ACL_V6` tries, keyed by prefix: allowlist and denylist in one trie,
/// so a packet pays one longest-prefix lookup. The controller leaves out deny entries that lie
/// inside an allow entry, which keeps "allow wins" under longest-prefix matching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclEntry {
    /// [`ACL_ALLOW`] or [`ACL_DENY`].
    pub kind: u8,
    /// [`ORIGIN_CONFIG`] or [`ORIGIN_API`]: API entries survive reloads and restarts.
    pub origin: u8,
    pub _pad: [u8; 6],
    /// CLOCK_MONOTONIC ns after which a deny entry no longer applies; 0 = never expires.
    pub expires_ns: u64,
}

/// Over-quota events a CPU may emit per second: bounds the ring buffer's load under a
/// spoofed-source flood, where every source is new and over quota at once.
pub const EVENTS_PER_SECOND_PER_CPU: u64 = 1000;

/// A source went over quota under a rule: sent on the `EVENTS` ring buffer at most once per
/// (source, rule, window), and at most [`EVENTS_PER_SECOND_PER_CPU`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverQuotaEvent {
    pub addr: [u8; 16],
    pub rule_id: u32,
    /// [`Action`] applied to the refused traffic.
    pub action: u8,
    pub _pad: [u8; 3],
    /// Start of the window in which the source went over (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Units refused so far from this source under this rule.
    pub refused: u64,
}

/// Per-CPU state of the event rate limit (`EVENT_BUDGET`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub second_start_ns: u64,
    pub sent: u64,
}

/// Per-rule counters, one per CPU (`COUNTERS` is a per-CPU array indexed by rule id, of
/// `max_rules` entries).
/// Index 0 counts what no rule matched; global figures are the sum over all indices.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Counters {
    pub passed: u64,
    pub dropped: u64,
    /// Over quota, DSCP rewritten and passed.
    pub marked: u64,
    /// Over quota under a dry-run rule: counted and passed.
    pub dry_run: u64,
    pub bytes_passed: u64,
    pub bytes_dropped: u64,
    /// Truncated or malformed headers: passed to the kernel stack, which decides.
    pub malformed: u64,
    /// Not IPv4/IPv6 (ARP and the like): passed.
    pub non_ip: u64,
    pub allowlisted: u64,
    pub denylisted: u64,
    /// Dropped because rules cannot see what it carries: a first fragment too short for its
    /// transport header, or an IPv6 extension-header chain longer than the program walks.
    pub evasive: u64,
    /// Sources that got a new sliding-window entry.
    pub new_sources: u64,
}

impl Counters {
    /// Field-wise sum, for totals over CPUs and rules.
    pub fn add(&mut self, other: &Counters) {
        self.passed += other.passed;
        self.dropped += other.dropped;
        self.marked += other.marked;
        self.dry_run += other.dry_run;
        self.bytes_passed += other.bytes_passed;
        self.bytes_dropped += other.bytes_dropped;
        self.malformed += other.malformed;
        self.non_ip += other.non_ip;
        self.allowlisted += other.allowlisted;
        self.denylisted += other.denylisted;
        self.evasive += other.evasive;
        self.new_sources += other.new_sources;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::window::WindowState;
    // SAFETY: all are repr(C) with explicit padding and only integer fields: any bit pattern is valid.
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for AclEntry {}
    unsafe impl aya::Pod for OverQuotaEvent {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for WindowState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Rule>(), 48);
        assert_eq!(size_of::<AclEntry>(), 16);
        assert_eq!(size_of::<SourceKey>(), 20);
        assert_eq!(size_of::<Settings>(), 40);
        assert_eq!(size_of::<Counters>(), 12 * 8);
        assert_eq!(size_of::<crate::WindowState>(), 40);
        assert_eq!(size_of::<OverQuotaEvent>(), 40);
    }

    #[test]
    fn rule_indexes_cover_their_arrays_without_overlap() {
        assert_eq!(rule_index(1, 3, 65_535), RULE_INDEX_ENTRIES - 1);
        assert_eq!(rule_index(0, 0, 0), 0);
        assert_ne!(rule_index(0, 1, 80), rule_index(1, 1, 80));
        assert_ne!(rule_index(0, 0, 80), rule_index(0, 1, 80));
        assert_eq!(
            rule_slot_index(1, MAX_RULES - 1),
            RULE_SLOTS * MAX_RULES - 1
        );
        assert_eq!(rule_protocol(proto::UDP), Some(1));
        assert_eq!(rule_protocol(47), None);
    }
}
