//! The reference packet parser and decision never panic on any frame, and what they report
//! stays inside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use throttle_ctl::{
    config::Config,
    model::{parse, Model, Packet},
};

const RULES: &str = "rules:
  - {name: t, protocol: tcp, unit: connections, limit: 2, window: 1s}
  - {name: u, protocol: udp, port: 53, unit: bytes, limit: 500, window: 1s, action: mark, dscp: 8}
  - {name: i, protocol: icmp, limit: 1, window: 1s, action: mark, dscp: 46}
  - {name: i6, protocol: icmpv6, limit: 1, window: 1s, action: dry-run}
";

fuzz_target!(|frame: &[u8]| {
    if let Packet::Ip { l3, .. } = parse(frame) {
        assert!(l3 + 20 <= frame.len());
    }
    let config = Config::from_yaml(RULES).expect("valid rules");
    let rules = config
        .compile_rules()
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.id = i as u32 + 1;
            r
        })
        .collect();
    let mut model = Model::new(rules, Vec::new());
    for now in [1_000_000_000u64, 1_000_000_001, 1_500_000_000] {
        let decision = model.decide(frame, now);
        assert_eq!(decision.frame.len(), frame.len(), "a decision never resizes the frame");
    }
});
