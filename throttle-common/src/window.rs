//! Sliding-window counter, shared by the kernel program and userspace.
//!
//! Each (source, rule) keeps the count of the current fixed window and of the previous one. The
//! usage at time `t`, `elapsed` into the current window of length `W`, is estimated as
//!
//! ```text
//! estimate = prev * (W - elapsed) / W + curr
//! ```
//!
//! i.e. the previous window weighted by how much of it still overlaps the sliding window ending
//! at `t`. A request of `cost` units is admitted when `estimate + cost <= limit`; only admitted
//! units are counted, so a flooding source still gets its full quota.
//!
//! Integer only (the verifier accepts no floats): the weight is a fixed-point fraction of
//! [`WEIGHT_BITS`] bits. No division per packet either: [`Window`] carries the reciprocal of
//! `W`, computed (with its zero check) when the rules are written.
//!
//! # Error bounds (property-tested in `tests/window_props.rs`)
//! - Within any window-aligned interval at most `limit` units are admitted.
//! - Within any interval of length `W` at most `2 * limit` units are admitted; this is the
//!   worst case of the estimator (a burst at the very end of one window, then traffic at the end of
//!   the next), against `limit` for an exact sliding log.
//! - Fixed-point rounding: the previous window's share is within `1/2 + prev / 2^WEIGHT_BITS`
//!   units of the exact `prev * (W - elapsed) / W` (rounded to the nearest unit).
//! - A flood at a steady rate is admitted what an exact sliding log admits, within one unit per
//!   window (so within 0.1% once `limit >= 1000`); a steady source of at most `limit - 1` units
//!   per window is never refused (zero false positives).
//!
//! Concurrency: the state lives in one shared (not per-CPU) map value and is updated with
//! atomics, so a source whose packets land on several CPUs still gets `limit`, not
//! `limit * ncpus`. See [`admit`].

use core::ptr::addr_of_mut;

use crate::atomic;

/// Bits of the fixed-point weight of the previous window.
pub const WEIGHT_BITS: u32 = 20;
/// Largest window accepted (about 2.4 hours); with [`MAX_LIMIT`] the products below fit in u64.
pub const MAX_WINDOW_NS: u64 = 1 << 43;
/// Largest limit accepted, in the rule's unit (packets, bytes or connections).
pub const MAX_LIMIT: u64 = 1 << 43;

/// Per-(source, rule) state, the value of the `SOURCES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Start of the current window, CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    /// Units admitted in the previous window.
    pub prev: u64,
    /// Units admitted so far in the current window.
    pub curr: u64,
    /// Units refused since the source was first tracked (for `throttle-ctl top`).
    pub refused: u64,
    /// `start_ns` of the last window in which an over-quota event was sent for this source.
    pub reported_start_ns: u64,
}

impl WindowState {
    /// State of a source first seen at `now`.
    pub const fn new(now: u64) -> Self {
        Self {
            start_ns: now,
            prev: 0,
            curr: 0,
            refused: 0,
            reported_start_ns: 0,
        }
    }

    /// State of a source first seen at `now` whose first `cost` units are admitted: what
    /// [`admit`] makes of [`WindowState::new`], for `cost <= limit` (a fresh window's
    /// estimate is 0). Lets the kernel insert a new source already counted, without looking
    /// it up again; returns None when `cost` does not fit `limit`.
    #[inline(always)]
    pub const fn admitted(now: u64, cost: u64, limit: u64) -> Option<Self> {
        if cost > limit {
            return None;
        }
        let mut state = Self::new(now);
        state.curr = cost;
        Some(state)
    }
}

/// Counts a refusal of `cost` units; returns true if it is the first in the current window
/// that should be reported (one over-quota event per source, rule and window).
///
/// # Safety
/// As for [`admit`].
#[inline(always)]
pub unsafe fn refuse(state: *mut WindowState, cost: u64) -> bool {
    // SAFETY (all atomic calls): fields of the caller's valid state.
    unsafe { atomic::add(addr_of_mut!((*state).refused), cost) };
    let start = unsafe { atomic::load(addr_of_mut!((*state).start_ns)) };
    let reported = unsafe { addr_of_mut!((*state).reported_start_ns) };
    let last = unsafe { atomic::load(reported) };
    last != start && unsafe { atomic::compare_exchange(reported, last, start) }
}

/// A window length and its reciprocal, `ceil(2^63 / ns)`, computed once when rules are written
/// so the per-packet weight costs a multiplication instead of a 64-bit division.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub ns: u64,
    pub inv: u64,
}

impl Window {
    /// `ns` is at most [`MAX_WINDOW_NS`]; 0 gives a window that never weighs the past.
    pub const fn new(ns: u64) -> Self {
        let inv = match ns {
            0 => 0,
            _ => (1u64 << 63).div_ceil(ns),
        };
        Window { ns, inv }
    }
}

/// Weight of the previous window, `(W - elapsed) / W`, as a fraction of `2^WEIGHT_BITS`
/// (within one unit of it).
#[inline(always)]
pub fn prev_weight(elapsed: u64, window: Window) -> u64 {
    if elapsed >= window.ns {
        return 0;
    }
    // (W - elapsed) * ceil(2^63 / W) < 2^63 + W <= 2^63 + 2^43: fits in u64.
    ((window.ns - elapsed) * window.inv) >> (63 - WEIGHT_BITS)
}

/// Estimated units used in the sliding window ending `elapsed` ns into the current window.
#[inline(always)]
pub fn estimate(prev: u64, curr: u64, elapsed: u64, window: Window) -> u64 {
    let prev = if prev > MAX_LIMIT { MAX_LIMIT } else { prev };
    // Rounded to the nearest unit: 6 of 10 at 60% stays 6 although the weight was rounded
    // down, and a sliver of a unit at the end of a window does not cost a whole one.
    // Fits: 2^43 * 2^20 + 2^19 < 2^64.
    let weighted = (prev * prev_weight(elapsed, window) + (1 << (WEIGHT_BITS - 1))) >> WEIGHT_BITS;
    weighted.saturating_add(curr)
}

/// Compare-exchange attempts on a contended counter before giving up: only a source hit from
/// many CPUs in the same instant exhausts them, and refusing it then is what its rate asks for.
const ATTEMPTS: usize = 4;

/// Decides whether `cost` units at time `now` fit in `limit` per `window`, and counts them if so.
///
/// Safe to run concurrently on the same state from several CPUs:
/// - rolling the window forward is done by the one caller that wins a compare-exchange on
///   `start_ns`; it raises `prev` before it lowers `curr`, so other CPUs may see more use
///   than there is for an instant, never less;
/// - admission is a compare-exchange on `curr` from the value the check was made on, so
///   `limit` is never exceeded and nothing has to be undone.
///
/// # Safety
/// `state` must point to a valid, 8-byte aligned `WindowState` (a map value in the kernel) that
/// is only accessed through this function while it runs.
#[inline(always)]
pub unsafe fn admit(
    state: *mut WindowState,
    now: u64,
    window: Window,
    limit: u64,
    cost: u64,
) -> bool {
    let start = unsafe { addr_of_mut!((*state).start_ns) };
    let prev = unsafe { addr_of_mut!((*state).prev) };
    let curr = unsafe { addr_of_mut!((*state).curr) };
    // SAFETY (all atomic calls): the three pointers are fields of the caller's valid state.
    let mut start_ns = unsafe { atomic::load(start) };
    let mut elapsed = now.saturating_sub(start_ns);
    if elapsed >= window.ns {
        // One window later the current count becomes the previous one; after two or more
        // windows of silence nothing carries over and the source starts afresh at `now`.
        let adjacent = elapsed < window.ns.saturating_mul(2);
        let new_start = if adjacent { start_ns + window.ns } else { now };
        if unsafe { atomic::compare_exchange(start, start_ns, new_start) } {
            let finished = unsafe { atomic::load(curr) };
            unsafe { atomic::swap(prev, if adjacent { finished } else { 0 }) };
            // Units admitted since the load belong to the new window: subtract, don't zero.
            unsafe { subtract_floor_zero(curr, finished) };
        }
        start_ns = unsafe { atomic::load(start) };
        elapsed = now.saturating_sub(start_ns);
    }
    let prev_units = unsafe { atomic::load(prev) };
    for _ in 0..ATTEMPTS {
        let used = unsafe { atomic::load(curr) };
        if estimate(prev_units, used, elapsed, window).saturating_add(cost) > limit {
            return false;
        }
        if unsafe { atomic::compare_exchange(curr, used, used + cost) } {
            return true;
        }
    }
    false
}

/// `*p -= v`, but never below zero (two overlapping roll-overs must not wrap the counter).
#[inline(always)]
unsafe fn subtract_floor_zero(p: *mut u64, v: u64) {
    for _ in 0..ATTEMPTS {
        let c = unsafe { atomic::load(p) };
        if unsafe { atomic::compare_exchange(p, c, c.saturating_sub(v)) } {
            return;
        }
    }
    // Still contended: start the window from zero rather than leave a stale count.
    unsafe { atomic::swap(p, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000_000_000;
    const WINDOW: Window = Window::new(W);

    fn run(state: &mut WindowState, now: u64, limit: u64) -> bool {
        unsafe { admit(state, now, WINDOW, limit, 1) }
    }

    #[test]
    fn weight_is_guarded_and_monotone() {
        assert_eq!(prev_weight(0, Window::new(0)), 0);
        assert_eq!(prev_weight(0, WINDOW), 1 << WEIGHT_BITS);
        assert_eq!(prev_weight(W, WINDOW), 0);
        assert_eq!(prev_weight(W / 2, WINDOW), 1 << (WEIGHT_BITS - 1));
        assert!(prev_weight(W / 3, WINDOW) > prev_weight(W / 2, WINDOW));
        for ns in [1, 3, 7, 999_999_937, MAX_WINDOW_NS] {
            assert_eq!(
                prev_weight(0, Window::new(ns)),
                1 << WEIGHT_BITS,
                "window {ns}"
            );
            if ns > 1 {
                assert!(prev_weight(ns - 1, Window::new(ns)) < 1 << WEIGHT_BITS);
            }
        }
    }

    #[test]
    fn estimate_does_not_overflow_at_the_limits() {
        let widest = Window::new(MAX_WINDOW_NS);
        assert_eq!(estimate(MAX_LIMIT, 0, 0, widest), MAX_LIMIT);
        assert_eq!(estimate(u64::MAX, u64::MAX, 0, widest), u64::MAX);
    }

    #[test]
    fn first_window_admits_exactly_the_limit() {
        let mut s = WindowState::new(0);
        let admitted = (0..1000).filter(|i| run(&mut s, *i, 10)).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn previous_window_is_weighted_by_overlap() {
        let mut s = WindowState::new(0);
        for i in 0..10 {
            assert!(run(&mut s, i, 10));
        }
        // Half-way into the next window, half of the previous 10 still count.
        let admitted = (0..100).filter(|_| run(&mut s, W + W / 2, 10)).count();
        assert_eq!(admitted, 5);
        assert_eq!(s.prev, 10);
    }

    #[test]
    fn silence_of_two_windows_resets() {
        let mut s = WindowState::new(0);
        for i in 0..10 {
            run(&mut s, i, 10);
        }
        assert!(!run(&mut s, 11, 10));
        let admitted = (0..100).filter(|_| run(&mut s, 5 * W, 10)).count();
        assert_eq!(admitted, 10);
        assert_eq!(s.start_ns, 5 * W);
        assert_eq!(s.prev, 0);
    }

    #[test]
    fn a_new_source_admitted_on_insert_is_what_admit_makes_of_it() {
        for (cost, limit) in [(1, 1), (1, 10), (1500, 100_000), (100, 100), (101, 100)] {
            let mut s = WindowState::new(7);
            let admitted = unsafe { admit(&mut s, 7, WINDOW, limit, cost) };
            assert_eq!(
                WindowState::admitted(7, cost, limit),
                admitted.then_some(s),
                "cost {cost}, limit {limit}"
            );
        }
    }

    #[test]
    fn cost_larger_than_limit_is_refused() {
        let mut s = WindowState::new(0);
        assert!(!unsafe { admit(&mut s, 0, WINDOW, 100, 101) });
        assert!(unsafe { admit(&mut s, 0, WINDOW, 100, 100) });
        assert_eq!(s.curr, 100);
    }

    #[test]
    fn refusals_are_counted_and_reported_once_per_window() {
        let mut s = WindowState::new(1);
        assert!(run(&mut s, 1, 1));
        assert!(!run(&mut s, 1, 1));
        assert!(unsafe { refuse(&mut s, 1) });
        assert!(!unsafe { refuse(&mut s, 1) });
        assert!(!run(&mut s, W + 2, 1));
        assert!(unsafe { refuse(&mut s, 5) }, "a new window reports again");
        assert_eq!(s.refused, 7);
    }

    #[test]
    fn clock_going_backwards_is_treated_as_no_time() {
        let mut s = WindowState::new(10 * W);
        assert!(run(&mut s, 5 * W, 1));
        assert!(!run(&mut s, 5 * W, 1));
        assert_eq!(s.start_ns, 10 * W);
    }
}
