//! Tier 3: the flood benchmark's lab works for every filter, so `cargo xtask bench flood`
//! measures what it says: a short trafgen flood from 1k sources into a receiver filtered by
//! nothing, a bare XDP program, throttle, an nftables meter and iptables hashlimit. The
//! flood helper itself checks that throttle saw the frames, that the limiting filters let
//! at most half through and the others at least half. Timings are not asserted. Needs root.

use throttle_tests::{
    flood::{cpu_ns_per_packet, Filter, Sources},
    have_root,
};

#[test]
fn every_flood_filter_filters_or_passes_as_it_should() {
    if !have_root("every_flood_filter_filters_or_passes_as_it_should") {
        return;
    }
    let work = std::env::temp_dir().join(format!("throttle-flood-test-{}", std::process::id()));
    // About 600 frames per source, against a limit of 100 a second.
    for filter in Filter::ALL {
        let cost = cpu_ns_per_packet(filter, Sources::V4Thousand, 600_000, &work)
            .unwrap_or_else(|e| panic!("{}: {e:#}", filter.label()));
        println!(
            "FLOOD filter={:?} receiver_ns={:.0} machine_ns={:.0}",
            filter, cost.receiver_ns, cost.machine_ns
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
