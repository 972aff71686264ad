//! The atomic operations the sliding window needs, on raw pointers into map values.
//!
//! The bpfel target has no atomic compare-exchange or exchange in `core::sync::atomic`, although BPF has
//! had the instructions since Linux 5.12 (cpu v3): there we call the compiler intrinsics
//! directly; everywhere else `AtomicU64` does the same.
//!
//! Safety, for every function: `p` points to a valid, 8-byte aligned u64.

#[cfg(target_arch = "bpf")]
mod imp {
    use core::intrinsics::{self, AtomicOrdering::SeqCst};

    #[inline(always)]
    pub unsafe fn load(p: *mut u64) -> u64 {
        // An aligned 8-byte load is single-copy atomic in BPF.
        unsafe { core::ptr::read_volatile(p) }
    }
    #[inline(always)]
    pub unsafe fn swap(p: *mut u64, v: u64) -> u64 {
        unsafe { intrinsics::atomic_xchg::<u64, { SeqCst }>(p, v) }
    }
    /// `*p += v`, result unused (a plain BPF atomic add).
    #[inline(always)]
    pub unsafe fn add(p: *mut u64, v: u64) {
        unsafe { intrinsics::atomic_xadd::<u64, u64, { SeqCst }>(p, v) };
    }
    #[inline(always)]
    pub unsafe fn compare_exchange(p: *mut u64, old: u64, new: u64) -> bool {
        unsafe { intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }
}

#[cfg(not(target_arch = "bpf"))]
mod imp {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

    #[inline(always)]
    pub unsafe fn load(p: *mut u64) -> u64 {
        unsafe { AtomicU64::from_ptr(p) }.load(SeqCst)
    }
    #[inline(always)]
    pub unsafe fn swap(p: *mut u64, v: u64) -> u64 {
        unsafe { AtomicU64::from_ptr(p) }.swap(v, SeqCst)
    }
    #[inline(always)]
    pub unsafe fn add(p: *mut u64, v: u64) {
        unsafe { AtomicU64::from_ptr(p) }.fetch_add(v, SeqCst);
    }
    #[inline(always)]
    pub unsafe fn compare_exchange(p: *mut u64, old: u64, new: u64) -> bool {
        unsafe { AtomicU64::from_ptr(p) }
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }
}

pub(crate) use imp::*;
