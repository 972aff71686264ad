//! Several threads hammering one sliding window while time moves: the roll-over and the
//! admission races must neither lose the limit nor wrap a counter.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    thread,
};

use throttle_common::window::{admit, Window, WindowState};

const W: u64 = 1_000_000;
const LIMIT: u64 = 1000;
/// Clock advance per attempt, shared by all threads: 100k attempts per window, a 100x flood.
const STEP: u64 = 10;
const THREADS: usize = 4;
const PER_THREAD: u64 = 500_000;

struct Shared(*mut WindowState);
// SAFETY: the state is only touched through `admit`, which is safe to run concurrently.
unsafe impl Sync for Shared {}

#[test]
fn concurrent_floods_get_the_limit_per_window_and_counters_never_wrap() {
    let state = Box::into_raw(Box::new(WindowState::new(0)));
    let shared = Shared(state);
    let clock = AtomicU64::new(0);
    let admitted: u64 = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let shared = &shared;
                    let mut mine = 0u64;
                    for _ in 0..PER_THREAD {
                        let now = clock.fetch_add(STEP, Ordering::SeqCst);
                        // SAFETY: see `Shared`.
                        mine += unsafe { admit(shared.0, now, Window::new(W), LIMIT, 1) } as u64;
                        // SAFETY: fields of the shared state, read atomically like `admit` does.
                        let (curr, prev) = unsafe {
                            (
                                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*shared.0).curr))
                                    .load(Ordering::SeqCst),
                                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*shared.0).prev))
                                    .load(Ordering::SeqCst),
                            )
                        };
                        assert!(
                            curr <= LIMIT && prev <= LIMIT,
                            "counter out of range: curr {curr}, prev {prev}"
                        );
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    // SAFETY: all threads are done; reclaim the Box.
    let end = unsafe { Box::from_raw(state) };
    let windows = clock.load(Ordering::SeqCst) / W;
    assert!(
        admitted >= LIMIT * (windows - 1) && admitted <= LIMIT * (windows + 1),
        "{admitted} admitted over {windows} windows of {LIMIT}; end state {end:?}"
    );
}
