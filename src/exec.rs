//! `compute-worker exec`: one command in a sandbox, as a thin layer over
//! the sandbox library.

use anyhow::Result;

use crate::cli::{ExecArgs, SandboxArgs};
use crate::sandbox::{self, Limits, Output, RunSpec, Sandbox, SandboxConfig};

/// Build the sandbox configuration from the command line, and clean up
/// after crashed runs.
pub fn sandbox_config(args: &SandboxArgs, limits_wanted: bool) -> Result<SandboxConfig> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(sandbox::default_state_dir);
    let cgroup = match &args.cgroup_parent {
        None => None,
        Some(parent) => match sandbox::cgroup::delegation(parent) {
            Ok(d) => Some(d),
            Err(why) => {
                tracing::warn!("cgroup subtree {} is not usable: {why}", parent.display());
                None
            }
        },
    };
    if cgroup.is_none() && limits_wanted {
        tracing::warn!(
            "no delegated cgroup: memory, pids and cpu limits are OFF for this run \
             (set --cgroup-parent / COMPUTE_WORKER_CGROUP_PARENT to a subtree this user owns)"
        );
    }
    let cfg = SandboxConfig::for_current_user(state_dir, cgroup)?;
    let removed = cfg.clean_stale()?;
    if removed > 0 {
        tracing::info!(removed, "removed run directories left by crashed runs");
    }
    Ok(cfg)
}

/// Run the command; returns the exit code for the process.
pub fn run(args: ExecArgs) -> Result<i32> {
    let limits = Limits {
        memory: args.memory,
        pids: args.pids,
        cpus: args.cpus.clone(),
    };
    let cfg = sandbox_config(&args.sandbox, !limits.is_empty())?;
    let mut run = RunSpec::new(&args.rootfs, args.command);
    run.env.extend(args.env);
    run.cwd = args.workdir;
    (run.uid, run.gid) = args.user;
    run.binds = args.binds;
    run.network = args.network;
    run.limits = limits;
    run.timeout = args.timeout;
    run.hostname = args.hostname;
    run.read_only = args.read_only;
    run.keep_upper = args.keep;

    let sandbox = match Sandbox::start(&cfg, &run, Output::Inherit, Output::Inherit) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compute-worker exec: {e}");
            return Ok(e.exit_code());
        }
    };
    let killer = sandbox.killer()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            killer.kill();
        }
    });
    let upper = sandbox.upper_dir();
    let outcome = sandbox.wait(&cfg);
    handle.close();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compute-worker exec: {e}");
            return Ok(e.exit_code());
        }
    };
    match outcome {
        sandbox::Outcome::Exited(_) | sandbox::Outcome::Signaled(_) => {}
        other => eprintln!("compute-worker exec: {other}"),
    }
    if args.keep {
        eprintln!("compute-worker exec: the run's writes are kept in {}", upper.display());
    }
    Ok(outcome.exit_code())
}
