//! Property tests of the sliding-window estimator against an exact sliding log.

use std::collections::VecDeque;

use proptest::prelude::*;
use throttle_common::window::{admit, estimate, Window, WindowState, WEIGHT_BITS};

const W: u64 = 1_000_000_000;

/// Exact reference: admits when the units admitted in (t - W, t] plus `cost` fit in `limit`.
struct SlidingLog {
    admitted: VecDeque<(u64, u64)>,
    sum: u64,
}

impl SlidingLog {
    fn new() -> Self {
        SlidingLog {
            admitted: VecDeque::new(),
            sum: 0,
        }
    }
    fn admit(&mut self, t: u64, limit: u64, cost: u64) -> bool {
        while let Some(&(at, c)) = self.admitted.front() {
            if at + W > t {
                break;
            }
            self.admitted.pop_front();
            self.sum -= c;
        }
        if self.sum + cost > limit {
            return false;
        }
        self.admitted.push_back((t, cost));
        self.sum += cost;
        true
    }
}

/// Runs the estimator over arrivals; returns (time, window start, admitted) per arrival.
fn run(arrivals: &[u64], limit: u64) -> Vec<(u64, u64, bool)> {
    let mut s = WindowState::new(arrivals[0]);
    arrivals
        .iter()
        .map(|&t| {
            let ok = unsafe { admit(&mut s, t, Window::new(W), limit, 1) };
            (t, s.start_ns, ok)
        })
        .collect()
}

fn sorted_arrivals(max_len: usize, span_windows: u64) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0..span_windows * W, 1..max_len).prop_map(|mut v| {
        v.sort();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Bound 1: never more than `limit` in one counting window.
    #[test]
    fn never_more_than_limit_per_counting_window(arrivals in sorted_arrivals(2000, 12), limit in 1u64..200) {
        let mut per_window = std::collections::HashMap::new();
        for (_, start, ok) in run(&arrivals, limit) {
            if ok {
                *per_window.entry(start).or_insert(0u64) += 1;
            }
        }
        prop_assert!(per_window.values().all(|&n| n <= limit));
    }

    /// Bound 2: never more than `2 * limit` in any interval of length W.
    #[test]
    fn never_more_than_twice_the_limit_per_sliding_window(arrivals in sorted_arrivals(2000, 12), limit in 1u64..200) {
        let admitted: Vec<u64> = run(&arrivals, limit).into_iter().filter(|a| a.2).map(|a| a.0).collect();
        for (i, &t) in admitted.iter().enumerate() {
            let in_window = admitted[..=i].iter().rev().take_while(|&&a| a + W > t).count() as u64;
            prop_assert!(in_window <= 2 * limit, "{in_window} in (t-W, t] with limit {limit}");
        }
    }

    /// Bound 3: the rounded estimate is within 1/2 + prev/2^20 of the exact formula.
    #[test]
    fn estimate_is_within_rounding_of_the_exact_formula(prev in 0u64..1 << 40, curr in 0u64..1 << 40, elapsed in 0..W) {
        let exact = prev as f64 * (W - elapsed) as f64 / W as f64 + curr as f64;
        let got = estimate(prev, curr, elapsed, Window::new(W)) as f64;
        let bound = 0.5 + prev as f64 / (1u64 << WEIGHT_BITS) as f64 + 1e-6 * exact;
        prop_assert!((got - exact).abs() <= bound, "got {got}, exact {exact}");
    }

    /// A flood at a steady rate gets what an exact sliding log gives it, within one unit per
    /// window, and within 0.1% of `limit` per window once the limit is 1000 or more.
    #[test]
    fn steady_flood_matches_the_sliding_log(limit in 1u64..3000, overload in 2u64..20, windows in 10u64..30, phase in 0..W) {
        let period = (W / (limit * overload)).max(1);
        let arrivals: Vec<u64> = (0..).map(|i| phase + i * period).take_while(|&t| t < phase + windows * W).collect();
        let ours = run(&arrivals, limit).iter().filter(|a| a.2).count() as u64;
        let mut log = SlidingLog::new();
        let exact = arrivals.iter().filter(|&&t| log.admit(t, limit, 1)).count() as u64;
        prop_assert!(ours.abs_diff(exact) <= windows, "ours {ours}, sliding log {exact}");
        prop_assert!(ours <= windows * limit);
        if limit >= 1000 {
            let expected = windows * limit;
            prop_assert!(ours.abs_diff(expected) * 1000 <= expected, "ours {ours}, expected {expected}");
        }
    }

    /// Zero false positives: a steady source of at most `limit - 1` units per window is never refused.
    #[test]
    fn steady_compliant_source_is_never_refused(limit in 2u64..3000, windows in 2u64..20, phase in 0..W, slack in 0u64..1000) {
        let period = W / (limit - 1) + slack;
        let arrivals: Vec<u64> = (0..).map(|i| phase + i * period).take_while(|&t| t < phase + windows * W).collect();
        let refused = run(&arrivals, limit).iter().filter(|a| !a.2).count();
        prop_assert_eq!(refused, 0);
    }
}

/// The worst case of bound 2 is reached: a burst at the end of one window, then a burst at the
/// end of the next, is nearly 2 * limit within one window length.
#[test]
fn twice_the_limit_is_reachable() {
    let limit = 100;
    let mut s = WindowState::new(0);
    let mut admitted = 0;
    for _ in 0..limit {
        admitted += unsafe { admit(&mut s, W - 1, Window::new(W), limit, 1) } as u64;
    }
    for _ in 0..limit {
        admitted += unsafe { admit(&mut s, 2 * W - 10_000_000, Window::new(W), limit, 1) } as u64;
    }
    // Both bursts fall within (W - 1, 2W - 10ms], an interval shorter than W.
    assert!(admitted >= 199, "{admitted}");
}
