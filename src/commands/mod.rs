//! One file per verb of the command line; `main.rs` dispatches to each
//! file's `run`. Nothing imports a command: what two of them share lives
//! in the library rooms (`host`, `units`, `job`, `ops`, ...).

pub mod bench;
pub mod config;
pub mod doctor;
pub mod exec;
pub mod hitl;
pub mod images;
pub mod import;
pub mod install_service;
pub mod prune;
pub mod pull;
pub mod run;
pub mod serve;
pub mod setup_host;
