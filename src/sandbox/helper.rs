//! The sandbox process's side: what runs in the namespaces `process.rs`
//! clones, and the launcher (`compute-worker __sandbox`) that clones them
//! for callers with threads.
//!
//! A sandbox process waits until the caller has written its user
//! namespace's id maps (in a held user namespace, see `userns.rs`, they
//! were written once), becomes root there, and does its task: a run (it is
//! then the keeper, see [`super::keeper`]) or a one-shot task (remove
//! directories, unpack a layer, probe an overlay mount).

use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Uid};

use super::clone::{clone_with, CloneResult};
use super::keeper::{self, Keeper};
use super::private_mounts::make_mounts_private;
use super::rundir::remove_tree;
use super::wire::{self, fds, Command, Event, Task};

/// The sandbox's log filter variable: its own, because libcontainer logs
/// from the container's init process land in the program's stderr, which
/// participants read.
pub const LOG_VAR: &str = "COMPUTE_WORKER_SANDBOX_LOG";
/// The sandbox's log filter when [`LOG_VAR`] is not set.
pub const LOG_DEFAULT: &str = "error,libcontainer=off,libcgroups=off";

/// Entry point of a sandbox process cloned from its caller (see
/// `process.rs`): the caller's logging gives way to the sandbox's own.
/// Never returns.
pub fn main_cloned(task: Task) -> ! {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_VAR)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_DEFAULT));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish();
    // This process has one thread, and its clones copy its default.
    let _logging = tracing::subscriber::set_default(logger);
    exit_with(run_task(task, control_socket(), Origin::Caller))
}

/// The hidden subcommand that makes the binary a launcher.
pub const LAUNCHER_ARG: &str = "__sandbox";
/// The launcher's flag: join the user namespace on [`fds::USERNS`] first.
pub const JOIN_USERNS_ARG: &str = "--join-userns";

/// Entry point of `compute-worker __sandbox [--join-userns]`, the launcher:
/// read the task, clone its sandbox process, tell the caller its pid, and
/// wait for it. Never returns.
pub fn main() -> ! {
    let join = std::env::args_os()
        .nth(2)
        .is_some_and(|a| a == JOIN_USERNS_ARG);
    exit_with(join_held_userns(join).and_then(|()| launch(join)))
}

/// Entry point of a launcher cloned from its caller (see `process.rs`) or
/// from the fork server, with its task; `joined` when it is in the held
/// user namespace already. Never returns.
pub fn main_cloned_launcher(task: Task, joined: bool) -> ! {
    exit_with(launch_task(task, control_socket(), joined))
}

fn join_held_userns(join: bool) -> Result<()> {
    if !join {
        return Ok(());
    }
    // SAFETY: the caller starts us with the namespace on this fd when it
    // passes the flag, and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fds::USERNS) };
    super::userns::join(fd.as_fd()).context("joining the worker's user namespace")
}

fn exit_with(result: Result<()>) -> ! {
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("compute-worker sandbox: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn control_socket() -> UnixStream {
    // SAFETY: the caller starts us with the control socket on this fd and
    // nothing else in this process owns it.
    unsafe { UnixStream::from_raw_fd(fds::CONTROL) }
}

/// How the sandbox process came to be. Its parent is the caller itself
/// (whose death it sees as the end of its control socket, and cleans up
/// after) or a launcher (whose death must take the sandbox with it); in a
/// held user namespace there are no id maps to wait for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Caller,
    Launcher { held_userns: bool },
}

/// The exec'd launcher: read the task, and launch it.
fn launch(joined: bool) -> Result<()> {
    let control = control_socket();
    let task: Task = {
        let mut reader = BufReader::new(&control);
        wire::recv(&mut reader)?.context("no task on the control socket")?
    };
    launch_task(task, control, joined)
}

/// Clone the task's sandbox process: in a new user namespace, or, when
/// this launcher has `joined` a held one, in that namespace.
fn launch_task(task: Task, mut control: UnixStream, joined: bool) -> Result<()> {
    let mut flags = task.clone_flags();
    if joined {
        flags.remove(CloneFlags::CLONE_NEWUSER);
    }
    let origin = Origin::Launcher {
        held_userns: joined,
    };
    // The sandbox process speaks on the control socket only once the
    // launcher has sent `Cloned`: in a held user namespace it has no maps
    // to wait for, and a fast task's answer would otherwise come first.
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: the launcher is a fresh exec of the binary, or a clone of a
    // single-threaded caller, that has started no thread, and the child
    // never returns from `run_task`'s exit.
    match unsafe { clone_with(flags) }.context("clone")? {
        CloneResult::Child => {
            drop(go_w);
            // The launcher closes its end once `Cloned` is sent (or dies).
            let _ = nix::unistd::read(go_r.as_raw_fd(), &mut [0u8]);
            drop(go_r);
            exit_with(run_task(task, control, origin))
        }
        CloneResult::Parent(child) => {
            drop(go_r);
            let sent = wire::send(
                &mut control,
                &Event::Cloned {
                    pid: child.as_raw(),
                },
            );
            drop(go_w);
            sent?;
            // The conversation is the sandbox process's now; when it dies,
            // the caller must see the socket's end.
            drop(control);
            match waitpid(child, None).context("waiting for the sandbox process")? {
                WaitStatus::Exited(_, 0) => Ok(()),
                status => bail!("the sandbox process ended: {status:?}"),
            }
        }
    }
}

/// In the new namespaces: wait for the id maps, become root, do `task`.
fn run_task(task: Task, mut control: UnixStream, origin: Origin) -> Result<()> {
    if origin != Origin::Caller {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    }
    let mut reader = BufReader::new(control.try_clone()?);
    if origin != (Origin::Launcher { held_userns: true }) {
        match wire::recv::<Command>(&mut reader)? {
            Some(Command::Mapped) => {}
            _ => return Ok(()), // the caller gave up
        }
    }
    become_root()?;

    match task {
        Task::Run {
            run,
            id,
            rundir,
            scratch,
            cgroup,
            seccomp,
        } => {
            let keeper = Keeper {
                control,
                reader,
                run: *run,
                id,
                rundir,
                scratch,
                cgroup,
                seccomp,
            };
            match keeper.main() {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
        Task::Remove { paths } => {
            let errors = paths
                .iter()
                .filter_map(|p| {
                    remove_tree(p)
                        .err()
                        .map(|e| format!("{}: {e}", p.display()))
                })
                .collect();
            wire::send(&mut control, &Event::Removed { errors })?;
            Ok(())
        }
        Task::Unpack {
            media_type,
            dest,
            opts,
        } => {
            // SAFETY: the caller starts us with the layer stream on this fd
            // for an Unpack task, and nothing else in this process owns it.
            let input = unsafe { File::from_raw_fd(fds::INPUT) };
            let result = rootfs_cache::unpack_layer_from(input, &media_type, &dest, &opts)
                .map_err(|e| wire::UnpackFailure::from(&e));
            wire::send(&mut control, &Event::Unpacked { result })?;
            Ok(())
        }
        Task::TreeDigest { dir } => {
            let result = rootfs_cache::tree_digest(&dir)
                .map_err(|e| format!("hashing the tree {}: {e}", dir.display()));
            wire::send(&mut control, &Event::TreeDigested { result })?;
            Ok(())
        }
        Task::ProbeOverlay { dir } => {
            let result = probe_overlay(&dir).map_err(|e| format!("{e:#}"));
            wire::send(&mut control, &Event::Probed { result })?;
            Ok(())
        }
    }
}

fn become_root() -> Result<()> {
    let root_g = Gid::from_raw(0);
    let root_u = Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g).context("setresgid(0) in the user namespace")?;
    nix::unistd::setresuid(root_u, root_u, root_u).context("setresuid(0) in the user namespace")?;
    // Only possible when setgroups is allowed (newgidmap allows it); drop
    // the supplementary groups the caller had, which are unmapped anyway.
    let _ = nix::unistd::setgroups(&[]);
    Ok(())
}

/// The `ProbeOverlay` task, in its own mount namespace: mount an overlay of
/// `dir/lower` on `dir/merged` exactly as a run mounts its rootfs, read
/// through it and write through it. The mount goes with the namespace.
fn probe_overlay(dir: &Path) -> Result<()> {
    make_mounts_private()?;
    let merged = dir.join("merged");
    keeper::mount_overlay(
        &[dir.join("lower")],
        &dir.join("upper"),
        &dir.join("work"),
        &merged,
        true,
    )?;
    std::fs::read(merged.join(PROBE_FILE))
        .context("reading a lower-layer file through the overlay")?;
    std::fs::write(merged.join("written"), b"ok").context("writing through the overlay")?;
    if !dir.join("upper/written").is_file() {
        bail!("a file written through the overlay did not land in its upper layer");
    }
    Ok(())
}

/// Name of the file `probe_overlay` expects in its lower layer.
pub const PROBE_FILE: &str = "probe";
