//! Operator commands: `doctor` (is this host ready?), `setup-host` (make it
//! ready, as root, once) and `install-service` (run `serve` as a systemd
//! user service).

pub mod check;
pub mod doctor;
pub mod doctor_codabench;
pub mod doctor_id_mode;
pub mod doctor_store;
mod network;
pub mod service;
pub mod setup_host;

use std::path::Path;

/// True when systemd is the init system (`/run/systemd/system` exists, as
/// `sd_booted()` checks).
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}
