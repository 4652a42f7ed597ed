//! compute-worker: a Codabench compute worker that runs submissions in
//! rootless youki sandboxes, with no container engine.
//!
//! The shape is broker → job → sandbox; images come from the separate
//! `rootfs-cache` crate.

pub mod bench;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod gpu;
pub mod host;
pub mod hostname;
pub mod job;
pub mod metrics;
pub mod ops;
pub mod sandbox;
pub mod site;
pub mod units;
