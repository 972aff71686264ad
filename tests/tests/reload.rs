//! Tier 3: a reload of a large rule set takes effect in traffic. The benchmark's reload
//! measurement (`throttle_tests::reload`), run here for what it proves, not for its timings:
//! the real daemon loads 10000 rules, a rule's limit lowered by `throttle-ctl reload` holds a
//! stream back, and raised again lets it through. Needs root.

use throttle_tests::{have_root, reload::measure};

#[test]
fn reloads_of_ten_thousand_rules_are_enforced_in_traffic() {
    if !have_root("reloads_of_ten_thousand_rules_are_enforced_in_traffic") {
        return;
    }
    let runs = measure(10_000, 2).unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        // Figures for the log only: timings are the benchmark's business.
        println!(
            "RELOAD rules=10000 enforced_ms={:.1} command_ms={:.1}",
            r.enforced.as_secs_f64() * 1e3,
            r.command.as_secs_f64() * 1e3
        );
    }
}
