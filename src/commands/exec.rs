//! `compute-worker exec`: one command in a sandbox, as a thin layer over
//! the sandbox library.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use anyhow::Result;

use crate::cli::ExecArgs;
use crate::host::Starts;
use crate::sandbox::{self, Output, RunSpec, Sandbox};

/// A run on `image`: its layers, Env, WorkingDir and User (a name looked
/// up in the image's own `/etc/passwd`); `command` replaces its Cmd and
/// follows its Entrypoint, as with `docker run`.
pub fn image_run(image: &rootfs_cache::Image, command: Vec<String>) -> Result<RunSpec> {
    Ok(crate::job::image_run::image_run(
        &image.name,
        &image.layers,
        &image.config,
        command,
    )?)
}

/// Run the command; returns the exit code for the process.
pub fn run(args: ExecArgs) -> Result<i32> {
    let began = std::time::Instant::now();
    if args.phases.is_some() {
        sandbox::phases::arm();
    }
    let phases_file = args.phases.clone();
    let code = run_command(args)?;
    if let Some(file) = phases_file {
        let report = sandbox::phases::Report {
            phases_us: sandbox::phases::sums(),
            total_us: sandbox::phases::micros(began.elapsed()),
        };
        std::fs::write(&file, serde_json::to_vec(&report)?)?;
    }
    Ok(code)
}

fn run_command(args: ExecArgs) -> Result<i32> {
    let configuration = sandbox::phases::phase!("configuration");
    let limits = args.limits.limits();
    let cfg = args.sandbox.config(Some(&limits), Starts::One)?;
    // With --image, the lease keeps the image from eviction while it runs.
    let (mut run, _lease) = match (&args.rootfs, &args.image) {
        (Some(rootfs), _) => {
            if let Some(w) = crate::sandbox::rootfs_tree_warning(rootfs, &cfg.maps) {
                eprintln!("compute-worker exec: warning: {w}");
            }
            (RunSpec::new(rootfs, args.command), None)
        }
        (None, Some(reference)) => {
            let (image, lease) =
                crate::host::get_or_pull(&args.images.store_settings(), &cfg, reference)?;
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
    drop(configuration);
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
        Ok((o, _usage)) => o,
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
