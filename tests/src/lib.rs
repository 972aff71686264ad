//! Helpers for throttle's kernel and end-to-end test tiers: packet crafting, privilege checks,
//! and network namespaces that clean up after themselves.

pub mod chart;
pub mod daemon;
pub mod flood;
pub mod netns;
pub mod packet;
pub mod reload;
pub mod traffic;

/// True when the test may run. Root-only tests call this first: without root they print why
/// they skip, unless `THROTTLE_TEST_ROOT_REQUIRED` is set (as `cargo xtask test` does as
/// root, and CI runs as root), where a skip would hide a failure.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("THROTTLE_TEST_ROOT_REQUIRED").is_some() {
        panic!("{test}: needs root, and THROTTLE_TEST_ROOT_REQUIRED is set");
    }
    eprintln!("SKIPPED {test}: needs root (BPF and network namespaces)");
    false
}
