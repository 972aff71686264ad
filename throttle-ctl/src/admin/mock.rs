//! A [`Control`] with fixed data for the admin API and metrics tests; it records the calls
//! that reach it, so a test can check that a refused request never did.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

use crate::control::{
    AclEntryView, AclList, AclOrigin, AclRequest, Control, ControlError, CounterView, MapOccupancy,
    ReloadOutcome, RuleView, Stats, Status, TopEntry, TopOrder,
};

pub(crate) struct MockControl {
    ready: AtomicBool,
    /// Every call returns this error when set.
    fail: Mutex<Option<fn() -> ControlError>>,
    /// Only `stats()` fails.
    fail_stats: AtomicBool,
    calls: Mutex<Vec<String>>,
}

impl MockControl {
    pub(crate) fn new() -> MockControl {
        MockControl {
            ready: AtomicBool::new(true),
            fail: Mutex::new(None),
            fail_stats: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(crate) fn fail_with(&self, error: fn() -> ControlError) {
        *self.fail.lock().unwrap() = Some(error);
    }

    pub(crate) fn fail_stats(&self) {
        self.fail_stats.store(true, Ordering::SeqCst);
    }

    /// The calls made so far, e.g. `top(Rate, 5)`.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, call: String) -> Result<(), ControlError> {
        self.calls.lock().unwrap().push(call);
        match *self.fail.lock().unwrap() {
            Some(error) => Err(error()),
            None => Ok(()),
        }
    }

    pub(crate) fn sample_status() -> Status {
        Status {
            iface: "eth0".into(),
            attach_mode: "driver".into(),
            program_id: 42,
            generation: 2,
            uptime_seconds: 3600,
            adopted: false,
            pin_dir: Some("/sys/fs/bpf/throttle".into()),
            config_path: "/etc/throttle/throttle.yaml".into(),
            maps: vec![
                MapOccupancy {
                    name: "SOURCES".into(),
                    entries: 3,
                    max_entries: 65536,
                },
                MapOccupancy {
                    name: "ACL_V4".into(),
                    entries: 1,
                    max_entries: 4096,
                },
            ],
        }
    }

    pub(crate) fn sample_rules() -> Vec<RuleView> {
        vec![
            RuleView {
                id: 1,
                name: "ssh".into(),
                protocol: "tcp".into(),
                port: Some(22),
                unit: "connections".into(),
                limit: 10,
                window_seconds: 60.0,
                action: "drop".into(),
                dscp: None,
                counters: CounterView {
                    passed: 100,
                    dropped: 7,
                    marked: 2,
                    dry_run: 3,
                    bytes_passed: 6400,
                    bytes_dropped: 448,
                    new_sources: 4,
                    ..CounterView::default()
                },
            },
            RuleView {
                id: 2,
                name: "dns".into(),
                protocol: "udp".into(),
                port: None,
                unit: "packets".into(),
                limit: 100,
                window_seconds: 1.5,
                action: "dry-run".into(),
                dscp: Some(8),
                counters: CounterView::default(),
            },
        ]
    }

    pub(crate) fn sample_stats() -> Stats {
        Stats {
            generation: 2,
            global: CounterView {
                passed: 1000,
                dropped: 50,
                marked: 2,
                dry_run: 3,
                bytes_passed: 64000,
                bytes_dropped: 3200,
                malformed: 5,
                non_ip: 6,
                allowlisted: 8,
                denylisted: 9,
                evasive: 10,
                new_sources: 4,
            },
            rules: Self::sample_rules(),
            reloads_succeeded: 1,
            reloads_failed: 1,
            over_quota_events: 11,
        }
    }

    pub(crate) fn sample_acl() -> Vec<AclEntryView> {
        vec![
            AclEntryView {
                list: AclList::Allow,
                cidr: "10.0.0.0/8".into(),
                expires_in_seconds: None,
                origin: AclOrigin::Config,
            },
            AclEntryView {
                list: AclList::Deny,
                cidr: "2001:db8::/32".into(),
                expires_in_seconds: Some(600),
                origin: AclOrigin::Api,
            },
        ]
    }

    pub(crate) fn sample_top() -> Vec<TopEntry> {
        vec![TopEntry {
            source: "198.18.0.7".into(),
            rule: "ssh".into(),
            admitted_per_second: 0.25,
            refused: 7,
        }]
    }
}

impl Control for MockControl {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn status(&self) -> Result<Status, ControlError> {
        self.call("status".into())?;
        Ok(Self::sample_status())
    }

    fn rules(&self) -> Result<Vec<RuleView>, ControlError> {
        self.call("rules".into())?;
        Ok(Self::sample_rules())
    }

    fn top(&self, order: TopOrder, limit: usize) -> Result<Vec<TopEntry>, ControlError> {
        self.call(format!("top({order:?}, {limit})"))?;
        Ok(Self::sample_top())
    }

    fn stats(&self) -> Result<Stats, ControlError> {
        self.call("stats".into())?;
        if self.fail_stats.load(Ordering::SeqCst) {
            return Err(ControlError::Internal("counters map unreadable".into()));
        }
        Ok(Self::sample_stats())
    }

    fn acl(&self) -> Result<Vec<AclEntryView>, ControlError> {
        self.call("acl".into())?;
        Ok(Self::sample_acl())
    }

    fn acl_add(&self, request: AclRequest) -> Result<AclEntryView, ControlError> {
        self.call(format!(
            "acl_add({}, {}, {:?})",
            request.list.as_str(),
            request.cidr,
            request.ttl_seconds
        ))?;
        Ok(AclEntryView {
            list: request.list,
            cidr: request.cidr,
            expires_in_seconds: request.ttl_seconds,
            origin: AclOrigin::Api,
        })
    }

    fn acl_remove(&self, list: AclList, cidr: &str) -> Result<(), ControlError> {
        self.call(format!("acl_remove({}, {cidr})", list.as_str()))
    }

    fn reload(&self) -> Result<ReloadOutcome, ControlError> {
        self.call("reload".into())?;
        Ok(ReloadOutcome {
            generation: 3,
            rules: 2,
        })
    }

    fn detach(&self) -> Result<(), ControlError> {
        self.call("detach".into())
    }
}
