//! The sandbox configuration every command that runs programs or unpacks
//! images builds first: the state directory, the delegated cgroup, the
//! held user namespace, and clean-up after crashed runs.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::sandbox::cgroup::{self, Lookup};
use crate::sandbox::{self, Delegation, Limits, SandboxConfig};

/// How many sandbox processes a command starts: one (`exec`), or many
/// (a job, a pull), for which one user namespace is made and held for all
/// (see [`SandboxConfig::hold_user_namespace`]) and a fork server clones
/// the launchers ([`SandboxConfig::start_fork_server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starts {
    One,
    Many,
}

/// Build the sandbox configuration from the command line, and clean up
/// after crashed runs.
///
/// `limits` is `Some` for the commands that run programs (the limits they
/// ask for): they get a delegated cgroup when there is one, found and made
/// ready here, while this process is still single-threaded (on cgroup v2
/// the worker may have to move itself into a leaf of it). Without one
/// they run without limits, and say so once when they asked for some.
pub fn sandbox_config(
    state_dir: Option<PathBuf>,
    cgroup_parent: Option<&Path>,
    id_mode: sandbox::IdModeSetting,
    limits: Option<&Limits>,
    starts: Starts,
) -> Result<SandboxConfig> {
    let state_dir = state_dir.unwrap_or_else(sandbox::default_state_dir);
    let cgroup = limits.and_then(|l| delegated_cgroup(cgroup_parent, l));
    let mut cfg = SandboxConfig::for_current_user(state_dir, cgroup, id_mode)?;
    if cfg.id_mode == sandbox::IdMode::Single {
        tracing::warn!("{}", cfg.id_mode.describe());
    }
    if starts == Starts::Many {
        cfg.hold_user_namespace()?;
        // A command that starts many sandboxes has threads by then: its
        // launchers come from the fork server instead of an exec each.
        if let Err(e) = cfg.start_fork_server() {
            tracing::warn!("no fork server ({e}); every sandbox start execs the binary");
        }
    }
    let removed = cfg.clean_stale()?;
    if removed > 0 {
        tracing::info!(removed, "removed run directories left by crashed runs");
    }
    Ok(cfg)
}

/// The delegated cgroup runs go in, ready; `None` (with one warning when
/// it matters) when there is none.
fn delegated_cgroup(configured: Option<&Path>, limits: &Limits) -> Option<Delegation> {
    const OFF: &str = "memory and cpu limits are OFF (the pids limit falls back to RLIMIT_NPROC)";
    let (why, unusable) = match cgroup::lookup(configured) {
        Lookup::Found(c) => match c.prepare() {
            Ok(d) => {
                tracing::debug!(
                    parent = %d.parent.display(),
                    controllers = %d.controllers.join(" "),
                    "runs get their cgroups in the delegated subtree"
                );
                return Some(d);
            }
            Err(why) => (why, true),
        },
        Lookup::Absent(why) => (why, false),
        Lookup::Unusable(why) => (why, true),
    };
    if unusable {
        let subtree = match configured {
            Some(p) => format!("cgroup subtree {}", p.display()),
            None => "this process's delegated cgroup".to_string(),
        };
        if !limits.needs_cgroup() {
            tracing::warn!("{subtree} is not usable: {why}; runs get no cgroup");
        } else {
            tracing::warn!("{subtree} is not usable: {why}; {OFF}");
        }
    } else if limits.needs_cgroup() {
        let fix = match cgroup::host_version() {
            cgroup::Version::V1 => "name a subtree this user owns",
            cgroup::Version::V2 => {
                "run the worker in a cgroup systemd delegates to it: the user service of \
                 `compute-worker install-service` (Delegate=yes), or `systemd-run --user --scope \
                 -p Delegate=yes compute-worker ...`; or set --cgroup-parent to a subtree this \
                 user owns that the worker runs in"
            }
        };
        tracing::warn!("{OFF}: {why}; {fix}");
    }
    None
}
