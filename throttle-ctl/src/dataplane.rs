//! The data plane: the XDP program loaded from the embedded object, and its maps.
//!
//! Rule sets are applied so that no packet sees a half-written set: rules go into the inactive
//! slot of the `RULES` map, then one write to `SETTINGS` switches slots, then the old slot is
//! cleared (see `throttle_common::RULE_SLOTS`).

use std::{collections::HashSet, net::IpAddr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use ipnet::IpNet;
use throttle_common::{
    names, AllowEntry, Counters, DenyEntry, RuleKey, Settings, SourceKey, WindowState, RULE_SLOTS,
    SCHEMA_VERSION,
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
        program.load().map_err(|source| DataplaneError::Program {
            what: "verifying the XDP program".into(),
            source,
        })?;
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
            Err(e) if mode == AttachMode::Auto => {
                warn!(iface, error = %e, "native XDP unavailable, falling back to generic (skb) mode");
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

    /// Applies a validated config: rules by slot switch, then allow and deny lists.
    /// Returns the new generation.
    pub fn apply(&mut self, config: &Config) -> Result<u64, DataplaneError> {
        let settings = self.settings()?;
        let old_slot = settings.active_slot as u8;
        let new_slot = (settings.active_slot + 1) as u8 % RULE_SLOTS as u8;

        let mut rules: HashMap<_, RuleKey, throttle_common::Rule> =
            HashMap::try_from(self.map(names::RULES)?).map_err(map_err(names::RULES))?;
        remove_slot(&mut rules, new_slot)?;
        for r in config.compile_rules() {
            let key = RuleKey {
                slot: new_slot,
                proto: r.proto,
                port: r.port,
            };
            rules
                .insert(key, r.rule, 0)
                .map_err(map_err(names::RULES))?;
        }

        let now = self.now_ns()?;
        let allow: Vec<(Cidr, AllowEntry)> = config
            .allow
            .iter()
            .map(|c| (*c, AllowEntry::default()))
            .collect();
        let deny: Vec<(Cidr, DenyEntry)> = config
            .deny
            .iter()
            .map(|d| {
                let expires_ns = d.ttl.map_or(0, |t| now.saturating_add(t.as_nanos() as u64));
                (d.cidr, DenyEntry { expires_ns })
            })
            .collect();
        self.sync_list(names::ALLOW_V4, names::ALLOW_V6, &allow)?;
        self.sync_list(names::DENY_V4, names::DENY_V6, &deny)?;

        let generation = settings.generation + 1;
        self.write_settings(|s| {
            s.active_slot = new_slot as u32;
            s.allow_entries = allow.len() as u32;
            s.deny_entries = deny.len() as u32;
            s.generation = generation;
        })?;
        let mut rules: HashMap<_, RuleKey, throttle_common::Rule> =
            HashMap::try_from(self.map(names::RULES)?).map_err(map_err(names::RULES))?;
        remove_slot(&mut rules, old_slot)?;
        info!(
            generation,
            rules = config.rules.len(),
            allow = allow.len(),
            deny = deny.len(),
            "rules applied"
        );
        Ok(generation)
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

    /// Makes a pair of tries hold exactly `entries`: new ones are added before stale ones go,
    /// so an address listed in both the old and the new set is never unlisted in between.
    fn sync_list<V: aya::Pod>(
        &mut self,
        v4_name: &'static str,
        v6_name: &'static str,
        entries: &[(Cidr, V)],
    ) -> Result<(), DataplaneError> {
        let mut v4: LpmTrie<_, [u8; 4], V> =
            LpmTrie::try_from(self.map(v4_name)?).map_err(map_err(v4_name))?;
        let mut keep4 = HashSet::new();
        for (cidr, value) in entries {
            if let IpNet::V4(net) = cidr.0 {
                v4.insert(
                    &Key::new(net.prefix_len() as u32, net.addr().octets()),
                    value,
                    0,
                )
                .map_err(map_err(v4_name))?;
                keep4.insert((net.prefix_len() as u32, net.addr().octets()));
            }
        }
        let stale: Vec<_> = v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            v4.remove(&k).map_err(map_err(v4_name))?;
        }

        let mut v6: LpmTrie<_, [u8; 16], V> =
            LpmTrie::try_from(self.map(v6_name)?).map_err(map_err(v6_name))?;
        let mut keep6 = HashSet::new();
        for (cidr, value) in entries {
            if let IpNet::V6(net) = cidr.0 {
                v6.insert(
                    &Key::new(net.prefix_len() as u32, net.addr().octets()),
                    value,
                    0,
                )
                .map_err(map_err(v6_name))?;
                keep6.insert((net.prefix_len() as u32, net.addr().octets()));
            }
        }
        let stale: Vec<_> = v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            v6.remove(&k).map_err(map_err(v6_name))?;
        }
        Ok(())
    }
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

fn remove_slot(
    rules: &mut HashMap<&mut MapData, RuleKey, throttle_common::Rule>,
    slot: u8,
) -> Result<(), DataplaneError> {
    let keys: Vec<RuleKey> = rules
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.slot == slot)
        .collect();
    for k in keys {
        rules.remove(&k).map_err(map_err(names::RULES))?;
    }
    Ok(())
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
