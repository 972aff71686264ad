//! Types and math shared by the throttle XDP program (`throttle-ebpf`) and its controller.
//!
//! Everything here is `no_std` and compiled twice: into the kernel program for `bpfel-unknown-none`,
//! and into userspace (with the `user` feature, which adds `aya::Pod` for map access). One copy of
//! the sliding-window math means the kernel and the tests can never disagree about it.
#![no_std]
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

mod atomic;

pub mod maps;
pub mod window;

pub use maps::*;
pub use window::{admit, estimate, refuse, Window, WindowState};
