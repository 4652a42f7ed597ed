//! `compute-worker exec`: one command in a sandbox, as a thin layer over
//! the sandbox library.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::{ExecArgs, SandboxArgs};
use crate::sandbox::cgroup::{self, Lookup};
use crate::sandbox::{self, Delegation, Limits, Output, RunSpec, Sandbox, SandboxConfig};
/// How many sandbox processes a command starts: one (`exec`), or many
/// (a job, a pull), for which one user namespace is made and held for all
/// (see [`SandboxConfig::hold_user_namespace`]).
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
    args: &SandboxArgs,
    limits: Option<&Limits>,
    starts: Starts,
) -> Result<SandboxConfig> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(sandbox::default_state_dir);
    let cgroup = limits.and_then(|l| delegated_cgroup(args.cgroup_parent.as_deref(), l));
    let mut cfg = SandboxConfig::for_current_user(state_dir, cgroup)?;
    if starts == Starts::Many {
        cfg.hold_user_namespace()?;
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
    const OFF: &str = "memory, pids and cpu limits are OFF";
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
        if limits.is_empty() {
            tracing::warn!("{subtree} is not usable: {why}; runs get no cgroup");
        } else {
            tracing::warn!("{subtree} is not usable: {why}; {OFF}");
        }
    } else if !limits.is_empty() {
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

/// A run on `image`: its layers, Env, WorkingDir and User; `command`
/// replaces its Cmd and follows its Entrypoint, as with `docker run`.
pub fn image_run(image: &rootfs_cache::Image, command: Vec<String>) -> Result<RunSpec> {
    let cfg = &image.config;
    let mut argv: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    argv.extend(if command.is_empty() {
        cfg.cmd.clone().unwrap_or_default()
    } else {
        command
    });
    if argv.is_empty() {
        anyhow::bail!("{} has no Entrypoint or Cmd: give a command", image.name);
    }
    let mut run = RunSpec::new(PathBuf::new(), argv);
    run.layers = image.layers.clone();
    if let Some(env) = cfg.env.as_ref().filter(|e| !e.is_empty()) {
        run.env = env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            run.env
                .push(crate::sandbox::types::DEFAULT_PATH.to_string());
        }
    }
    if let Some(w) = cfg.working_dir.as_ref().filter(|w| !w.is_empty()) {
        run.cwd = w.clone();
    }
    if let Some(u) = cfg.user.as_ref().filter(|u| !u.is_empty()) {
        (run.uid, run.gid) = crate::cli::parse_user(u).map_err(|_| {
            anyhow::anyhow!(
                "{}: User `{u}` is not numeric; give --user UID[:GID]",
                image.name
            )
        })?;
    }
    Ok(run)
}

/// Run the command; returns the exit code for the process.
pub fn run(args: ExecArgs) -> Result<i32> {
    let limits = args.limits.limits();
    let cfg = sandbox_config(&args.sandbox, Some(&limits), Starts::One)?;
    // With --image, the lease keeps the image from eviction while it runs.
    let (mut run, _lease) = match (&args.rootfs, &args.image) {
        (Some(rootfs), _) => (RunSpec::new(rootfs, args.command), None),
        (None, Some(reference)) => {
            let (image, lease) = crate::images::get_or_pull(&args.images, &cfg, reference)?;
            (image_run(&image, args.command)?, Some(lease))
        }
        (None, None) => anyhow::bail!("give --rootfs DIR or --image REF"),
    };
    run.env.extend(args.env);
    if let Some(w) = args.workdir {
        run.cwd = w;
    }
    if let Some(user) = args.user {
        (run.uid, run.gid) = user;
    }
    run.binds = args.binds;
    run.network = args.network;
    run.limits = limits;
    run.timeout = args.timeout;
    run.hostname = args.hostname;
    run.read_only = args.read_only;
    run.keep_upper = args.keep;
    if let Some(spec) = &args.gpus {
        match crate::gpu::edits_for(&args.gpu_root.gpu_root, spec, &run.env) {
            Ok(edits) => {
                eprintln!("compute-worker exec: GPUs: {}", edits.described.join("; "));
                edits.apply(&mut run);
            }
            Err(e) => {
                eprintln!("compute-worker exec: {e}");
                return Ok(sandbox::exit_code::SANDBOX_ERROR);
            }
        }
    }

    // Ctrl-C, SIGTERM and SIGHUP stop the sandbox in order: their handlers
    // write to a pipe that the wait below watches (no thread needed).
    let interrupt = interrupt_pipe()?;
    let sandbox = match Sandbox::start(&cfg, &run, Output::Inherit, Output::Inherit) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compute-worker exec: {e}");
            return Ok(e.exit_code());
        }
    };
    let upper = sandbox.upper_dir();
    let outcome = sandbox.wait_interruptible(&cfg, interrupt.as_fd());
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
        eprintln!(
            "compute-worker exec: the run's writes are kept in {}",
            upper.display()
        );
    }
    Ok(outcome.exit_code())
}

/// A socket whose read end becomes readable on SIGINT, SIGTERM or SIGHUP:
/// their handlers write to it.
fn interrupt_pipe() -> Result<UnixStream> {
    let (r, w) = UnixStream::pair()?;
    r.set_nonblocking(true)?;
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::low_level::pipe::register(sig, w.try_clone()?)?;
    }
    Ok(r)
}
