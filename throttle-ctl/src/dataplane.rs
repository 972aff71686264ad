//! The data plane: the XDP program loaded from the embedded object, and its maps.
//!
//! Rule sets are applied so that no packet sees a half-written set: rules go into the inactive
//! slot of `RULES` / `RULE_INDEX`, then one write to `SETTINGS` switches slots. The old slot is
//! left as it is until the next apply clears it, so a packet that read the old slot number just
//! before the switch still finds a complete rule set.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    path::Path,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapError, PerCpuArray},
    programs::{links::PinnedLink, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use ipnet::IpNet;
use throttle_common::{
    names, rule_index, rule_protocol, rule_slot_index, AclEntry, Counters, Rule, Settings,
    SourceKey, WindowState, ACL_ALLOW, ACL_DENY, MAX_RULES, RULE_SLOTS, SCHEMA_VERSION,
};
use tracing::{info, warn};

use crate::config::{Cidr, Config};

/// The XDP object built by `cargo xtask build-ebpf`, embedded by build.rs (empty if it was not).
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/throttle.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this throttle-ctl was built without the XDP object; build with `cargo xtask build` \
         (which runs build-ebpf first)"
    )]
    NoObject,
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error(
        "the kernel's verifier rejected the XDP program ({error}); last lines of its log \
         (all of it at THROTTLE_LOG=debug):\n{tail}"
    )]
    Verifier { error: std::io::Error, tail: String },
    #[error("the XDP object has no {0}; it does not match this throttle-ctl")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Program { what: String, source: ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// How to attach to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode where the driver has no XDP support.
    Auto,
    /// Native mode only.
    Driver,
    /// Generic (skb) mode: works everywhere, runs later and costs more.
    Skb,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Size of the per-(source, rule) LRU table.
    pub max_sources: u32,
    /// Read time from `Settings::clock_override_ns` instead of the kernel clock (tests only).
    pub test_clock: bool,
}

pub struct Dataplane {
    ebpf: Ebpf,
    test_clock: bool,
}

impl Dataplane {
    /// Loads the program and creates its maps (not attached yet).
    pub fn load(opts: LoadOptions) -> Result<Self, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let test_clock = u8::from(opts.test_clock);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::SOURCES, opts.max_sources)
            .override_global(names::TEST_CLOCK, &test_clock, true)
            .load(OBJECT)?;
        let program = xdp_mut(&mut ebpf)?;
        program.load().map_err(verifier_error)?;
        let mut dp = Dataplane {
            ebpf,
            test_clock: opts.test_clock,
        };
        dp.write_settings(|s| s.schema_version = SCHEMA_VERSION)?;
        Ok(dp)
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        let program = self
            .ebpf
            .program(names::PROGRAM)
            .ok_or(DataplaneError::Missing("XDP program"))?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program {
                what: "XDP program".into(),
                source,
            })
    }

    /// Attaches to `iface`; returns the mode in use. Detached when `self` is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, DataplaneError> {
        let program = xdp_mut(&mut self.ebpf)?;
        let wanted = match mode {
            AttachMode::Skb => XdpMode::Skb,
            AttachMode::Auto | AttachMode::Driver => XdpMode::Driver,
        };
        let used = match program.attach(iface, wanted) {
            Ok(_) => wanted,
            // Only "the driver has no native XDP" falls back; anything else (another program
            // attached, an MTU too large for XDP) would fail the same way in generic mode or
            // hide a problem the operator must see.
            Err(e) if mode == AttachMode::Auto && native_unsupported(&e) => {
                warn!(
                    iface,
                    error = %e,
                    "native XDP unsupported by the driver, falling back to generic (skb) mode: it \
                     runs after GRO, so `packets` rules count merged TCP segments as one"
                );
                program
                    .attach(iface, XdpMode::Skb)
                    .map_err(|source| attach_error(iface, XdpMode::Skb, source))?;
                XdpMode::Skb
            }
            Err(source) => return Err(attach_error(iface, wanted, source)),
        };
        info!(iface, mode = ?used, "attached");
        Ok(used)
    }

    /// Applies a validated config: rules by slot switch, then the access lists.
    /// Returns the new generation.
    pub fn apply(&mut self, config: &Config) -> Result<u64, DataplaneError> {
        let settings = self.settings()?;
        let new_slot = (settings.active_slot + 1) % RULE_SLOTS;
        self.clear_slot(new_slot)?;
        let compiled = config.compile_rules();
        {
            let mut rules: Array<_, Rule> =
                Array::try_from(self.map(names::RULES)?).map_err(map_err(names::RULES))?;
            for r in &compiled {
                rules
                    .set(rule_slot_index(new_slot, r.id), r, 0)
                    .map_err(map_err(names::RULES))?;
            }
        }
        {
            // After the rules: an index entry never points at a rule not yet written.
            let mut index: Array<_, u16> = Array::try_from(self.map(names::RULE_INDEX)?)
                .map_err(map_err(names::RULE_INDEX))?;
            for r in &compiled {
                let protocol = rule_protocol(r.proto).expect("config only has rule protocols");
                index
                    .set(rule_index(new_slot, protocol, r.port), r.id as u16, 0)
                    .map_err(map_err(names::RULE_INDEX))?;
            }
        }

        let acl = access_list(config, self.now_ns()?);
        self.sync_acl(&acl)?;

        let generation = settings.generation + 1;
        self.write_settings(|s| {
            s.active_slot = new_slot;
            s.acl_entries = acl.len() as u32;
            s.generation = generation;
        })?;
        info!(
            generation,
            rules = compiled.len(),
            acl = acl.len(),
            "rules applied"
        );
        Ok(generation)
    }

    /// Empties a rule slot, using the rules it holds to find their index entries.
    fn clear_slot(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let mut stale = Vec::new();
        {
            let rules: Array<_, Rule> =
                Array::try_from(self.map(names::RULES)?).map_err(map_err(names::RULES))?;
            for id in 1..MAX_RULES {
                let rule = rules
                    .get(&rule_slot_index(slot, id), 0)
                    .map_err(map_err(names::RULES))?;
                if rule != Rule::default() {
                    stale.push((id, rule));
                }
            }
        }
        {
            let mut index: Array<_, u16> = Array::try_from(self.map(names::RULE_INDEX)?)
                .map_err(map_err(names::RULE_INDEX))?;
            for (_, rule) in &stale {
                if let Some(protocol) = rule_protocol(rule.proto) {
                    index
                        .set(rule_index(slot, protocol, rule.port), 0, 0)
                        .map_err(map_err(names::RULE_INDEX))?;
                }
            }
        }
        let mut rules: Array<_, Rule> =
            Array::try_from(self.map(names::RULES)?).map_err(map_err(names::RULES))?;
        for (id, _) in stale {
            rules
                .set(rule_slot_index(slot, id), Rule::default(), 0)
                .map_err(map_err(names::RULES))?;
        }
        Ok(())
    }

    /// Sets the time the program sees when loaded with `test_clock`.
    pub fn set_clock(&mut self, ns: u64) -> Result<(), DataplaneError> {
        self.write_settings(|s| s.clock_override_ns = ns)
    }

    pub fn settings(&self) -> Result<Settings, DataplaneError> {
        let map = self
            .ebpf
            .map(names::SETTINGS)
            .ok_or(DataplaneError::Missing(names::SETTINGS))?;
        let array: Array<_, Settings> = Array::try_from(map).map_err(map_err(names::SETTINGS))?;
        array.get(&0, 0).map_err(map_err(names::SETTINGS))
    }

    /// Counters of rule ids `0..=max_id`, each summed over CPUs. Index 0: traffic no rule matched.
    pub fn counters(&self, max_id: u32) -> Result<Vec<Counters>, DataplaneError> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .ok_or(DataplaneError::Missing(names::COUNTERS))?;
        let array: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).map_err(map_err(names::COUNTERS))?;
        (0..=max_id)
            .map(|id| {
                let per_cpu = array.get(&id, 0).map_err(map_err(names::COUNTERS))?;
                let mut sum = Counters::default();
                per_cpu.iter().for_each(|c| sum.add(c));
                Ok(sum)
            })
            .collect()
    }

    /// Sum of all counters.
    pub fn totals(&self, max_id: u32) -> Result<Counters, DataplaneError> {
        let mut sum = Counters::default();
        self.counters(max_id)?.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// Sliding-window state of one (source, rule), if tracked.
    pub fn source_state(
        &self,
        addr: IpAddr,
        rule_id: u32,
    ) -> Result<Option<WindowState>, DataplaneError> {
        let map = self
            .ebpf
            .map(names::SOURCES)
            .ok_or(DataplaneError::Missing(names::SOURCES))?;
        let sources: HashMap<_, SourceKey, WindowState> =
            HashMap::try_from(map).map_err(map_err(names::SOURCES))?;
        match sources.get(
            &SourceKey {
                addr: source_bytes(addr),
                rule_id,
            },
            0,
        ) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::SOURCES)(e)),
        }
    }

    /// CLOCK_MONOTONIC now, as the program sees it (the test clock when loaded with one).
    fn now_ns(&self) -> Result<u64, DataplaneError> {
        if self.test_clock {
            return Ok(self.settings()?.clock_override_ns);
        }
        Ok(monotonic_ns())
    }

    fn write_settings(&mut self, change: impl FnOnce(&mut Settings)) -> Result<(), DataplaneError> {
        let mut settings = self.settings()?;
        change(&mut settings);
        let mut array: Array<_, Settings> =
            Array::try_from(self.map(names::SETTINGS)?).map_err(map_err(names::SETTINGS))?;
        array.set(0, settings, 0).map_err(map_err(names::SETTINGS))
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::Missing(name))
    }

    /// Makes the access-list tries hold exactly `acl`.
    fn sync_acl(&mut self, acl: &StdHashMap<Cidr, AclEntry>) -> Result<(), DataplaneError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (cidr, entry) in acl {
            match cidr.0 {
                IpNet::V4(net) => v4.push((net.prefix_len() as u32, net.addr().octets(), *entry)),
                IpNet::V6(net) => v6.push((net.prefix_len() as u32, net.addr().octets(), *entry)),
            }
        }
        sync_trie(self.map(names::ACL_V4)?, names::ACL_V4, &v4)?;
        sync_trie(self.map(names::ACL_V6)?, names::ACL_V6, &v6)
    }
}

/// Makes a trie hold exactly `wanted` (prefix length, address, entry): new entries are written
/// before stale ones go, so an address listed before and after is never unlisted in between.
fn sync_trie<K: aya::Pod + Eq + Hash>(
    map: &mut aya::maps::Map,
    name: &'static str,
    wanted: &[(u32, K, AclEntry)],
) -> Result<(), DataplaneError> {
    let mut trie: LpmTrie<_, K, AclEntry> = LpmTrie::try_from(map).map_err(map_err(name))?;
    for (len, addr, entry) in wanted {
        trie.insert(&Key::new(*len, *addr), entry, 0)
            .map_err(map_err(name))?;
    }
    let keep: HashSet<(u32, K)> = wanted.iter().map(|(len, addr, _)| (*len, *addr)).collect();
    let present = trie
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err(name))?;
    for key in present {
        if !keep.contains(&(key.prefix_len(), key.data())) {
            trie.remove(&key).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// The access list as written to the tries. Allow wins: a deny entry inside (or equal to) an
/// allow entry is left out, since under longest-prefix matching it would otherwise override
/// the allow entry for its addresses.
pub fn access_list(config: &Config, now_ns: u64) -> StdHashMap<Cidr, AclEntry> {
    let mut acl = StdHashMap::new();
    for cidr in &config.allow {
        acl.insert(
            *cidr,
            AclEntry {
                kind: ACL_ALLOW,
                ..Default::default()
            },
        );
    }
    let allowed: HashSet<IpNet> = config.allow.iter().map(|c| c.0).collect();
    for deny in &config.deny {
        // The allow entries that could contain it are its supernets: at most 129 look-ups.
        let net = deny.cidr.0;
        let covering = (0..=net.prefix_len())
            .filter_map(|len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
            .find(|n| allowed.contains(n));
        if let Some(allow) = covering {
            warn!(deny = %deny.cidr, allow = %allow, "deny entry lies inside an allow entry; allow wins, deny ignored");
            continue;
        }
        let ttl_ns = deny
            .ttl
            .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        let expires_ns = if ttl_ns == 0 {
            0
        } else {
            now_ns.saturating_add(ttl_ns)
        };
        acl.insert(
            deny.cidr,
            AclEntry {
                kind: ACL_DENY,
                expires_ns,
                ..Default::default()
            },
        );
    }
    acl
}

/// A verifier rejection with the end of its log, where the reason is; the whole log (often
/// hundreds of kilobytes) goes to the debug log only.
fn verifier_error(e: ProgramError) -> DataplaneError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "verifier log");
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            DataplaneError::Verifier {
                error: io_error,
                tail,
            }
        }
        source => DataplaneError::Program {
            what: "loading the XDP program".into(),
            source,
        },
    }
}

/// Whether an attach in driver mode failed because the driver has no native XDP.
fn native_unsupported(e: &ProgramError) -> bool {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        other => std::error::Error::source(other)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error),
    };
    tracing::debug!(?errno, error = %e, "driver-mode attach failed");
    errno == Some(libc::EOPNOTSUPP)
}

fn attach_error(iface: &str, mode: XdpMode, source: ProgramError) -> DataplaneError {
    DataplaneError::Program {
        what: format!("attaching to {iface} in {mode:?} mode"),
        source,
    }
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(DataplaneError::Missing("XDP program"))?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program {
            what: "XDP program".into(),
            source,
        })
}

/// Name of the pinned XDP link in the pin directory (maps are pinned under their own names).
pub const LINK_PIN: &str = "link";

/// Maps that are pinned, so that state and enforcement outlive the daemon.
pub const PINNED_MAPS: [&str; 7] = [
    names::SETTINGS,
    names::RULE_INDEX,
    names::RULES,
    names::SOURCES,
    names::COUNTERS,
    names::ACL_V4,
    names::ACL_V6,
];

/// Stops enforcement left behind by a daemon that is gone: unpins the XDP link (the kernel
/// detaches the program once nothing holds the link) and removes the pinned maps and the
/// directory. Returns false if nothing was pinned there.
pub fn detach_pinned(dir: &Path) -> Result<bool, std::io::Error> {
    if !dir.exists() {
        return Ok(false);
    }
    let link = dir.join(LINK_PIN);
    if link.exists() {
        let pinned = PinnedLink::from_pin(&link).map_err(std::io::Error::other)?;
        drop(pinned.unpin()?);
    }
    for name in PINNED_MAPS {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::remove_dir(dir)?;
    Ok(true)
}

/// The 16-byte form of a source address used in `SourceKey` (IPv4 mapped into IPv6).
pub fn source_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => throttle_common::v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
