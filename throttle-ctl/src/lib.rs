//! throttle's controller as a library: config model and validation, and the data plane (the
//! loaded XDP program and its maps). The `throttle-ctl` binary and the test tiers use it.

pub mod admin;
pub mod batch;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod duration;
pub mod metrics;
pub mod model;
pub mod yaml_lines;
