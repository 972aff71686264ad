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
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapError, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use ipnet::IpNet;
use throttle_common::{
    names, rule_index, rule_protocol, rule_slot_index, AclEntry, Counters, Rule, Settings,
    SourceKey, WindowState, ACL_ALLOW, ACL_DENY, ATTACH_DRIVER, ATTACH_SKB, MAX_RULES, ORIGIN_API,
    ORIGIN_CONFIG, RULE_INDEX_ENTRIES, RULE_SLOTS, SCHEMA_VERSION,
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
    #[error("{}: {detail}", path.display())]
    Pin { path: PathBuf, detail: String },
    #[error(
        "the maps pinned at {} have another layout ({detail}); they belong to another version of \
         throttle, whose program keeps enforcing. To replace it: `throttle-ctl detach --pin-dir {}` \
         (stops enforcement), then start this daemon again",
        dir.display(), dir.display()
    )]
    IncompatiblePins { dir: PathBuf, detail: String },
    #[error("unknown network interface {0}")]
    UnknownInterface(String),
    #[error(
        "{rules} rules; the running program has room for {} rules (its max_rules {max_rules} is \
         fixed when it is loaded: restart with the new value, after `throttle-ctl detach` if its \
         maps are pinned)",
        .max_rules - 1
    )]
    TooManyRules { rules: usize, max_rules: u32 },
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

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Size of the per-(source, rule) LRU table.
    pub max_sources: u32,
    /// Entries of the per-CPU counters array: rule ids are 1..max_rules.
    pub max_rules: u32,
    /// Read time from `Settings::clock_override_ns` instead of the kernel clock (tests only).
    pub test_clock: bool,
    /// Pin maps and link here (on a bpffs), and adopt what an earlier daemon pinned, so
    /// enforcement and state outlive the daemon. None: everything goes with the process.
    pub pin_dir: Option<PathBuf>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    test_clock: bool,
    pin_dir: Option<PathBuf>,
    /// Maps were taken over from pins left by an earlier daemon.
    adopted: bool,
    /// Size of the loaded (or adopted) `COUNTERS`: rule ids are handed out below it.
    max_rules: u32,
    /// The rules written in each slot, as `RULES` holds them. This process is their only
    /// writer (the pin lock), so an apply need not read `max_rules` entries twice to find
    /// them. None after a failed write: the next apply reads the map again.
    slot_rules: Option<[Vec<Rule>; 2]>,
    /// An exclusive flock on the pin directory, held while loaded: two daemons on the same
    /// pins would overwrite each other's rule slots.
    _pin_lock: Option<std::fs::File>,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    /// Rule id of each config rule, in config order.
    pub ids: Vec<u32>,
}

impl Dataplane {
    /// Loads the program and creates its maps, or takes over the maps pinned in
    /// `opts.pin_dir` (not attached yet: see [`Dataplane::attach`]).
    pub fn load(opts: LoadOptions) -> Result<Self, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let adopted = match &opts.pin_dir {
            Some(dir) if dir.join(names::SETTINGS).exists() => {
                check_pinned_layout(dir)?;
                true
            }
            Some(dir) => {
                ensure_bpffs(dir)?;
                std::fs::create_dir_all(dir).map_err(|e| DataplaneError::Pin {
                    path: dir.clone(),
                    detail: format!("{e} (pins must be on a bpf filesystem)"),
                })?;
                false
            }
            None => false,
        };
        let pin_lock = match &opts.pin_dir {
            Some(dir) => Some(lock_pin_dir(dir)?),
            None => None,
        };
        // Pinned maps keep their size. aya checks array indexes against the size it was told,
        // so it must be told the pinned one, not the configured one.
        let (max_sources, max_rules) = match &opts.pin_dir {
            Some(dir) if adopted => (
                pinned_entries(dir, names::SOURCES)?,
                pinned_entries(dir, names::COUNTERS)?,
            ),
            _ => (opts.max_sources, opts.max_rules),
        };
        let test_clock = u8::from(opts.test_clock);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::SOURCES, max_sources)
            .map_max_entries(names::COUNTERS, max_rules)
            .override_global(names::TEST_CLOCK, &test_clock, true);
        let pin_paths: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let program = xdp_mut(&mut ebpf)?;
        program.load().map_err(verifier_error)?;
        let mut dp = Dataplane {
            ebpf,
            test_clock: opts.test_clock,
            pin_dir: opts.pin_dir,
            adopted,
            max_rules,
            slot_rules: None,
            _pin_lock: pin_lock,
        };
        if adopted {
            if max_rules != opts.max_rules {
                warn!(
                    pinned = max_rules,
                    configured = opts.max_rules,
                    "max_rules differs from the pinned counters' size, which stays until `throttle-ctl detach`"
                );
            }
            if max_sources != opts.max_sources {
                warn!(
                    pinned = max_sources,
                    configured = opts.max_sources,
                    "max_sources differs from the pinned table's size, which stays until `throttle-ctl detach`"
                );
            }
            info!(pin_dir = ?dp.pin_dir, generation = dp.settings()?.generation, "adopted pinned maps");
        } else {
            dp.write_settings(|s| s.schema_version = SCHEMA_VERSION)?;
            // Freshly created maps hold no rules. (Not known for pins left behind by a detach
            // that failed half-way: those are read on the first apply.)
            if dp.pin_dir.is_none() {
                dp.slot_rules = Some([Vec::new(), Vec::new()]);
            }
        }
        Ok(dp)
    }

    /// True when the maps were taken over from an earlier daemon's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Rule ids this program has counters for (1..max_rules): room for `max_rules - 1` rules.
    pub fn max_rules(&self) -> u32 {
        self.max_rules
    }

    /// Kernel id of the loaded program.
    pub fn program_id(&self) -> Result<u32, DataplaneError> {
        let info = self
            .program()?
            .info()
            .map_err(|source| DataplaneError::Program {
                what: "reading the program's info".into(),
                source,
            })?;
        Ok(info.id())
    }

    /// Kernel facts about one of the program's maps (size, entries limit).
    pub fn map_info(&self, name: &'static str) -> Result<aya::maps::MapInfo, DataplaneError> {
        self.map_data(name)?.info().map_err(map_err(name))
    }

    fn map_data(&self, name: &'static str) -> Result<&aya::maps::MapData, DataplaneError> {
        match self.ebpf.map(name).ok_or(DataplaneError::Missing(name))? {
            aya::maps::Map::Array(m)
            | aya::maps::Map::PerCpuArray(m)
            | aya::maps::Map::LruHashMap(m)
            | aya::maps::Map::LpmTrie(m)
            | aya::maps::Map::RingBuf(m) => Ok(m),
            _ => Err(DataplaneError::Missing(name)),
        }
    }

    fn batch_error(name: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
        move |io_error| DataplaneError::Map {
            map: name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_batch",
                io_error,
            }),
        }
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

    /// Attaches to `iface` and returns the mode in use. With a pin directory, the link is
    /// pinned so the program keeps running without the daemon; a link an earlier daemon
    /// pinned is taken over, and its program replaced by this one in one step
    /// (`bpf_link_update`), so enforcement never pauses. Without pins the program is detached
    /// when `self` is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, DataplaneError> {
        let ifindex = ifindex(iface)?;
        let link_pin = self.pin_dir.as_ref().map(|d| d.join(LINK_PIN));
        if let Some(pin) = link_pin.as_ref().filter(|p| p.exists()) {
            match self.adopt_link(pin, iface, ifindex) {
                Ok(used) => return Ok(used),
                Err(e) => {
                    // The interface was re-created (a new ifindex, or a link left without a
                    // device) or changed in the config: the old link protects nothing here.
                    warn!(iface, error = %e, "cannot take over the pinned link; replacing it (maps and state are kept)");
                    if let Ok(stale) = PinnedLink::from_pin(pin) {
                        drop(stale.unpin());
                    }
                    let _ = std::fs::remove_file(pin);
                }
            }
        }

        let program = xdp_mut(&mut self.ebpf)?;
        let wanted = match mode {
            AttachMode::Skb => XdpMode::Skb,
            AttachMode::Auto | AttachMode::Driver => XdpMode::Driver,
        };
        let (link_id, used) = match program.attach(iface, wanted) {
            Ok(id) => (id, wanted),
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
                let id = program
                    .attach(iface, XdpMode::Skb)
                    .map_err(|source| attach_error(iface, XdpMode::Skb, source))?;
                (id, XdpMode::Skb)
            }
            Err(source) => return Err(attach_error(iface, wanted, source)),
        };
        if let Some(pin) = link_pin {
            // Pinned, the link outlives this process: the program owns it no longer.
            let link = program
                .take_link(link_id)
                .map_err(|source| DataplaneError::Program {
                    what: "taking the link to pin it".into(),
                    source,
                })?;
            let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
                path: pin.clone(),
                detail: format!(
                    "{e}: this kernel attached XDP through netlink, which cannot be pinned"
                ),
            })?;
            fd_link.pin(&pin).map_err(|e| DataplaneError::Pin {
                path: pin.clone(),
                detail: e.to_string(),
            })?;
        }
        self.write_settings(|s| {
            s.ifindex = ifindex;
            s.attach_mode = if used == XdpMode::Skb {
                ATTACH_SKB
            } else {
                ATTACH_DRIVER
            };
        })?;
        info!(iface, mode = ?used, pinned = self.pin_dir.is_some(), "attached");
        Ok(used)
    }

    /// Puts this program into the link an earlier daemon pinned, in one step.
    fn adopt_link(
        &mut self,
        pin: &Path,
        iface: &str,
        ifindex: u32,
    ) -> Result<XdpMode, DataplaneError> {
        let settings = self.settings()?;
        let pin_error = |detail: String| DataplaneError::Pin {
            path: pin.to_path_buf(),
            detail,
        };
        if settings.ifindex != 0 && settings.ifindex != ifindex {
            return Err(pin_error(format!(
                "the pinned link is on interface index {}, {iface} is {ifindex}",
                settings.ifindex
            )));
        }
        let pinned = PinnedLink::from_pin(pin).map_err(|e| pin_error(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_error(e.to_string()))?;
        xdp_mut(&mut self.ebpf)?
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Program {
                what: format!("replacing the program of the pinned link on {iface}"),
                source,
            })?;
        let used = if settings.attach_mode == ATTACH_SKB {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        info!(iface, mode = ?used, "took over the pinned link; program replaced without a gap");
        Ok(used)
    }

    /// Applies a validated config: rules by slot switch, then the access list (the config's
    /// entries plus `runtime`, the ones added through the API). Rules keep their id across
    /// applies as long as their identity (name, unit, window) stays; new ones get ids handed
    /// out round-robin, with their counters zeroed.
    pub fn apply(
        &mut self,
        config: &Config,
        runtime: &[RuntimeAcl],
    ) -> Result<Applied, DataplaneError> {
        let max_rules = self.max_rules;
        if config.rules.len() >= max_rules as usize {
            return Err(DataplaneError::TooManyRules {
                rules: config.rules.len(),
                max_rules,
            });
        }
        let settings = self.settings()?;
        let new_slot = (settings.active_slot + 1) % RULE_SLOTS;
        let mut slots = match self.slot_rules.take() {
            Some(slots) => slots,
            None => [self.read_slot(0)?, self.read_slot(1)?],
        };
        let live: StdHashMap<u64, u32> = slots[(settings.active_slot & 1) as usize]
            .iter()
            .map(|r| (r.identity, r.id))
            .collect();
        let mut compiled = config.compile_rules();
        let mut taken: HashSet<u32> = compiled
            .iter()
            .filter_map(|r| live.get(&r.identity).copied())
            .collect();
        let live_ids: HashSet<u32> = live.values().copied().collect();
        let mut next = settings.next_rule_id.clamp(1, max_rules - 1);
        let mut fresh = Vec::new();
        let compiled_len = compiled.len();
        for rule in &mut compiled {
            rule.id = match live.get(&rule.identity) {
                Some(id) => *id,
                None => {
                    // Round-robin from `next`, avoiding ids live now (their windows are still
                    // keyed by them); when only those are left, one of a rule being removed.
                    let free = |avoid_live: bool| {
                        (0..max_rules - 1)
                            .map(|k| (next - 1 + k) % (max_rules - 1) + 1)
                            .find(|id| !(taken.contains(id) || avoid_live && live_ids.contains(id)))
                    };
                    // Some id is free: fewer rules than ids was checked above.
                    let id =
                        free(true)
                            .or_else(|| free(false))
                            .ok_or(DataplaneError::TooManyRules {
                                rules: compiled_len,
                                max_rules,
                            })?;
                    taken.insert(id);
                    fresh.push(id);
                    next = id % (max_rules - 1) + 1;
                    id
                }
            };
        }
        self.zero_counters(&fresh)?;
        self.clear_slot(new_slot, &slots[new_slot as usize])?;
        // Rules first: an index entry never points at a rule not yet written.
        self.write_rules(new_slot, compiled.iter().map(|r| (r.id, *r)))?;
        self.write_index(new_slot, &compiled, |r| r.id as u16)?;
        slots[new_slot as usize] = compiled.clone();
        self.slot_rules = Some(slots);

        let acl = self.apply_access_list(config, runtime)?;

        let generation = settings.generation + 1;
        self.write_settings(|s| {
            s.active_slot = new_slot;
            s.generation = generation;
            s.next_rule_id = next;
        })?;
        info!(generation, rules = compiled.len(), acl, "rules applied");
        Ok(Applied {
            generation,
            ids: compiled.iter().map(|r| r.id).collect(),
        })
    }

    /// Writes the access list alone (config entries plus `runtime`, expired ones left out);
    /// returns the number of entries.
    pub fn apply_access_list(
        &mut self,
        config: &Config,
        runtime: &[RuntimeAcl],
    ) -> Result<usize, DataplaneError> {
        let now = self.now_ns()?;
        let mut acl = access_list(config, runtime, now);
        // A config deny entry with a TTL keeps the expiry it got when first applied: neither a
        // reload nor a daemon restart extends it.
        let existing: StdHashMap<Cidr, AclEntry> = self.acl_entries()?.into_iter().collect();
        for (cidr, entry) in acl.iter_mut() {
            let is_config_ttl =
                |e: &AclEntry| e.kind == ACL_DENY && e.origin == ORIGIN_CONFIG && e.expires_ns != 0;
            if let Some(old) = existing
                .get(cidr)
                .filter(|old| is_config_ttl(old) && is_config_ttl(entry))
            {
                entry.expires_ns = old.expires_ns;
            }
        }
        acl.retain(|_, e| e.expires_ns == 0 || e.expires_ns > now);
        let count = acl.len();
        // Counted up before entries are added, down after they are removed: a packet may look
        // up an empty list, never skip a full one.
        let previous = self.settings()?.acl_entries as usize;
        if count > previous {
            self.write_settings(|s| s.acl_entries = count as u32)?;
        }
        self.sync_acl(&acl)?;
        self.write_settings(|s| s.acl_entries = count as u32)?;
        Ok(count)
    }

    /// The rules of the active slot.
    pub fn active_rules(&self) -> Result<Vec<Rule>, DataplaneError> {
        let slot = self.settings()?.active_slot;
        match &self.slot_rules {
            Some(slots) => Ok(slots[(slot & 1) as usize].clone()),
            None => self.read_slot(slot),
        }
    }

    /// The rules `RULES` holds in `slot`, read from the map.
    fn read_slot(&self, slot: u32) -> Result<Vec<Rule>, DataplaneError> {
        let mut out = Vec::new();
        // Ids 1..max_rules of the slot: the entries after the slot's id 0.
        crate::batch::for_each::<u32, Rule>(
            self.map_data(names::RULES)?,
            1,
            Some(rule_slot_index(slot, 0)),
            self.max_rules as usize - 1,
            |_, rules| out.extend(rules.iter().filter(|r| **r != Rule::default())),
        )
        .map_err(Self::batch_error(names::RULES))?;
        Ok(out)
    }

    /// Zeroes the counters of ids about to be given to new rules.
    fn zero_counters(&mut self, ids: &[u32]) -> Result<(), DataplaneError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cpus = possible_cpus()?;
        let mut counters: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.map(names::COUNTERS)?).map_err(map_err(names::COUNTERS))?;
        for id in ids {
            let zeros = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])
                .map_err(|e| DataplaneError::Map {
                    map: names::COUNTERS,
                    source: MapError::from(e),
                })?;
            counters
                .set(*id, zeros, 0)
                .map_err(map_err(names::COUNTERS))?;
        }
        Ok(())
    }

    /// Empties a rule slot: the entries of `stale`, the rules it holds, and their index
    /// entries.
    fn clear_slot(&mut self, slot: u32, stale: &[Rule]) -> Result<(), DataplaneError> {
        // Index entries first: none points at a rule already cleared.
        self.write_index(slot, stale, |_| 0)?;
        self.write_rules(slot, stale.iter().map(|r| (r.id, Rule::default())))
    }

    /// Writes `RULES[slot][id] = rule` for each entry, in one batch.
    fn write_rules(
        &self,
        slot: u32,
        entries: impl Iterator<Item = (u32, Rule)>,
    ) -> Result<(), DataplaneError> {
        let (keys, values): (Vec<u32>, Vec<Rule>) = entries
            .map(|(id, rule)| (rule_slot_index(slot, id), rule))
            .unzip();
        crate::batch::update(self.map_data(names::RULES)?, &keys, &values)
            .map_err(Self::batch_error(names::RULES))
    }

    /// Writes the `RULE_INDEX` entry of each rule's (protocol, port) in `slot`, in one batch.
    fn write_index(
        &self,
        slot: u32,
        rules: &[Rule],
        value: impl Fn(&Rule) -> u16,
    ) -> Result<(), DataplaneError> {
        let (keys, values): (Vec<u32>, Vec<u16>) = rules
            .iter()
            .filter_map(|r| Some((rule_index(slot, rule_protocol(r.proto)?, r.port), value(r))))
            .unzip();
        crate::batch::update(self.map_data(names::RULE_INDEX)?, &keys, &values)
            .map_err(Self::batch_error(names::RULE_INDEX))
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
        let cpus = possible_cpus()?;
        let mut out = Vec::with_capacity(max_id as usize + 1);
        crate::batch::for_each::<u32, Counters>(
            self.map_data(names::COUNTERS)?,
            cpus,
            None,
            max_id as usize + 1,
            |_, values| {
                out.extend(values.chunks(cpus).map(|per_cpu| {
                    let mut sum = Counters::default();
                    per_cpu.iter().for_each(|c| sum.add(c));
                    sum
                }))
            },
        )
        .map_err(Self::batch_error(names::COUNTERS))?;
        if out.len() != max_id as usize + 1 {
            return Err(DataplaneError::Map {
                map: names::COUNTERS,
                source: MapError::OutOfBounds {
                    index: max_id,
                    max_entries: out.len() as u32,
                },
            });
        }
        Ok(out)
    }

    /// Sum of all counters, of every id: removed rules included, so totals never go back.
    pub fn totals(&self) -> Result<Counters, DataplaneError> {
        let mut sum = Counters::default();
        self.counters(self.max_rules - 1)?
            .iter()
            .for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// Every tracked (source, rule) with its window state, at most `max` of them.
    pub fn sources(&self, max: usize) -> Result<Vec<(SourceKey, WindowState)>, DataplaneError> {
        let mut out = Vec::new();
        crate::batch::for_each::<SourceKey, WindowState>(
            self.map_data(names::SOURCES)?,
            1,
            None,
            max,
            |keys, values| out.extend(keys.iter().copied().zip(values.iter().copied())),
        )
        .map_err(Self::batch_error(names::SOURCES))?;
        Ok(out)
    }

    /// Number of entries in a hash or trie map (reads the hash in batches, walks a trie's keys).
    pub fn count_entries(&self, name: &'static str) -> Result<u64, DataplaneError> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::Missing(name))?;
        let count = match name {
            names::SOURCES => {
                let mut n = 0;
                crate::batch::for_each::<SourceKey, WindowState>(
                    self.map_data(name)?,
                    1,
                    None,
                    usize::MAX,
                    |keys, _| n += keys.len(),
                )
                .map_err(Self::batch_error(name))?;
                n
            }
            names::ACL_V4 => LpmTrie::<_, [u8; 4], AclEntry>::try_from(map)
                .map_err(map_err(name))?
                .keys()
                .count(),
            names::ACL_V6 => LpmTrie::<_, [u8; 16], AclEntry>::try_from(map)
                .map_err(map_err(name))?
                .keys()
                .count(),
            _ => return Err(DataplaneError::Missing(name)),
        };
        Ok(count as u64)
    }

    /// The access-list entries in the tries.
    pub fn acl_entries(&self) -> Result<Vec<(Cidr, AclEntry)>, DataplaneError> {
        let mut out = self.trie_entries::<[u8; 4]>(names::ACL_V4)?;
        out.extend(self.trie_entries::<[u8; 16]>(names::ACL_V6)?);
        Ok(out)
    }

    fn trie_entries<K: aya::Pod + Into<IpAddr>>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(Cidr, AclEntry)>, DataplaneError> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::Missing(name))?;
        let trie: LpmTrie<_, K, AclEntry> = LpmTrie::try_from(map).map_err(map_err(name))?;
        let mut out = Vec::new();
        for item in trie.iter() {
            let (key, entry) = item.map_err(map_err(name))?;
            if let Ok(net) = IpNet::new(key.data().into(), key.prefix_len() as u8) {
                out.push((Cidr(net), entry));
            }
        }
        Ok(out)
    }

    /// The over-quota event ring buffer; can be taken once.
    pub fn take_events(
        &mut self,
    ) -> Result<aya::maps::RingBuf<aya::maps::MapData>, DataplaneError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(DataplaneError::Missing(names::EVENTS))?;
        aya::maps::RingBuf::try_from(map).map_err(map_err(names::EVENTS))
    }

    /// Stops enforcement on purpose: unpins the link and the maps. The program is detached
    /// when `self` (the last holder of the link) is dropped.
    pub fn detach(self) -> Result<(), DataplaneError> {
        if let Some(dir) = &self.pin_dir {
            detach_pinned(dir).map_err(|e| DataplaneError::Pin {
                path: dir.clone(),
                detail: e.to_string(),
            })?;
        }
        drop(self);
        Ok(())
    }

    /// CLOCK_MONOTONIC now as the program sees it (the test clock when loaded with one).
    pub fn now(&self) -> Result<u64, DataplaneError> {
        self.now_ns()
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

/// An access-list entry added through the admin API: kept across reloads and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeAcl {
    pub cidr: Cidr,
    /// [`ACL_ALLOW`] or [`ACL_DENY`].
    pub kind: u8,
    /// CLOCK_MONOTONIC ns; 0 = never expires.
    pub expires_ns: u64,
}

/// The access list as written to the tries: the config's entries, then the API's (which win
/// for the same CIDR). Allow wins: a deny entry inside (or equal to) an allow entry is left
/// out, since under longest-prefix matching it would otherwise override the allow entry for
/// its addresses. Expired deny entries are left out.
pub fn access_list(
    config: &Config,
    runtime: &[RuntimeAcl],
    now_ns: u64,
) -> StdHashMap<Cidr, AclEntry> {
    let mut wanted: StdHashMap<Cidr, AclEntry> = StdHashMap::new();
    let entry = |kind, origin, expires_ns| AclEntry {
        kind,
        origin,
        expires_ns,
        ..Default::default()
    };
    for cidr in &config.allow {
        wanted.insert(*cidr, entry(ACL_ALLOW, ORIGIN_CONFIG, 0));
    }
    for deny in &config.deny {
        let ttl_ns = deny
            .ttl
            .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        let expires_ns = if ttl_ns == 0 {
            0
        } else {
            now_ns.saturating_add(ttl_ns)
        };
        wanted.insert(deny.cidr, entry(ACL_DENY, ORIGIN_CONFIG, expires_ns));
    }
    for r in runtime {
        wanted.insert(r.cidr, entry(r.kind, ORIGIN_API, r.expires_ns));
    }
    let allowed: HashSet<IpNet> = wanted
        .iter()
        .filter(|(_, e)| e.kind == ACL_ALLOW)
        .map(|(c, _)| c.0)
        .collect();
    wanted.retain(|cidr, e| {
        if e.kind != ACL_DENY {
            return true;
        }
        if e.expires_ns != 0 && e.expires_ns <= now_ns {
            return false;
        }
        // The allow entries that could contain it are its supernets: at most 129 look-ups.
        let net = cidr.0;
        let covering = (0..=net.prefix_len())
            .filter_map(|len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
            .find(|n| allowed.contains(n));
        if let Some(allow) = covering {
            warn!(deny = %cidr, allow = %allow, "deny entry lies inside an allow entry; allow wins, deny ignored");
            return false;
        }
        true
    });
    wanted
}

/// Checks that the maps pinned in `dir` have this build's layout before taking them over:
/// the key and value sizes of every map, the sizes of the arrays the program indexes with
/// constants, and the schema version written in `SETTINGS`.
fn check_pinned_layout(dir: &Path) -> Result<(), DataplaneError> {
    use std::mem::size_of;
    let incompatible = |detail: String| DataplaneError::IncompatiblePins {
        dir: dir.to_path_buf(),
        detail,
    };
    let expected: [(&str, usize, usize); 7] = [
        (names::SETTINGS, 4, size_of::<Settings>()),
        (names::RULE_INDEX, 4, size_of::<u16>()),
        (names::RULES, 4, size_of::<Rule>()),
        (
            names::SOURCES,
            size_of::<SourceKey>(),
            size_of::<WindowState>(),
        ),
        (names::COUNTERS, 4, size_of::<Counters>()),
        (names::ACL_V4, 8, size_of::<AclEntry>()),
        (names::ACL_V6, 20, size_of::<AclEntry>()),
    ];
    let fixed_sizes = [
        (names::RULE_INDEX, RULE_INDEX_ENTRIES),
        (names::RULES, RULE_SLOTS * MAX_RULES),
    ];
    for (name, key, value) in expected {
        let path = dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| incompatible(format!("{name} cannot be opened: {e}")))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(incompatible(format!(
                "{name} has {}-byte keys and {}-byte values, this build expects {key} and {value}",
                info.key_size(),
                info.value_size()
            )));
        }
        if let Some((_, entries)) = fixed_sizes.iter().find(|(n, _)| *n == name) {
            if info.max_entries() != *entries {
                return Err(incompatible(format!(
                    "{name} has {} entries, this build expects {entries}",
                    info.max_entries()
                )));
            }
        }
    }
    let data = aya::maps::MapData::from_pin(dir.join(names::SETTINGS))
        .map_err(map_err(names::SETTINGS))?;
    let settings: Array<_, Settings> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(names::SETTINGS))?;
    let version = settings
        .get(&0, 0)
        .map_err(map_err(names::SETTINGS))?
        .schema_version;
    if version != SCHEMA_VERSION {
        return Err(incompatible(format!(
            "schema version {version}, this build uses {SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

/// CPUs a per-CPU map has values for.
fn possible_cpus() -> Result<usize, DataplaneError> {
    aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Pin {
        path: PathBuf::from("/sys/devices/system/cpu/possible"),
        detail: e.to_string(),
    })
}

/// Entries of the map pinned as `name` in `dir`.
fn pinned_entries(dir: &Path, name: &'static str) -> Result<u32, DataplaneError> {
    aya::maps::MapInfo::from_pin(dir.join(name))
        .map(|info| info.max_entries())
        .map_err(map_err(name))
}

/// Takes the pin directory's lock, or says who holds it.
fn lock_pin_dir(dir: &Path) -> Result<std::fs::File, DataplaneError> {
    use std::os::fd::AsRawFd;
    let pin_error = |detail: String| DataplaneError::Pin {
        path: dir.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(dir).map_err(|e| pin_error(e.to_string()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(pin_error(format!(
            "another throttle-ctl is running with these pins ({})",
            std::io::Error::last_os_error()
        )));
    }
    Ok(file)
}

/// Mounts the bpf filesystem at /sys/fs/bpf when a pin directory below it is asked for and
/// nothing is mounted there yet (systemd usually mounts it; minimal hosts may not).
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    let path = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0 && fs.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    if unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(DataplaneError::Pin {
            path: root.to_path_buf(),
            detail: format!(
                "no bpf filesystem there, and mounting one failed: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    info!("mounted the bpf filesystem at /sys/fs/bpf");
    Ok(())
}

fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| DataplaneError::UnknownInterface(iface.into()))?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(DataplaneError::UnknownInterface(iface.into())),
        index => Ok(index),
    }
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
