//! Starting a sandbox's first process: the *keeper* of a run, or the process
//! of a one-shot task (remove, unpack, probe). It is created by one
//! `clone(2)` with every namespace it needs (a new user namespace, and for
//! a run new mount, pid and network namespaces, the keeper being pid 1 of
//! the pid namespace); the caller then writes the user namespace's id maps.
//!
//! From a single-threaded caller (`compute-worker exec` before it starts
//! any thread) the clone is a copy of the caller that goes on running the
//! task: no exec, no second load of the binary. A caller with threads
//! (`serve`, with tokio) must not let a copy of itself run Rust code, so it
//! execs the binary with the hidden `__sandbox` subcommand instead: that
//! *launcher* reads the task, makes the same clone, tells the caller the
//! sandbox process's pid, and waits for it.
//!
//! With a held user namespace (`userns.rs`) the sandbox process is made in
//! it instead of in a new one: a launcher joins it (`setns(2)`) and clones
//! the sandbox process with the other namespaces. That launcher is a clone
//! of a single-threaded caller, or the exec'd `__sandbox --join-userns`
//! with the namespace on [`fds::USERNS`]; the caller has no maps to write.
//!
//! Either way the sandbox process starts with the handed fds on
//! [`fds::CONTROL`]..[`fds::INPUT`] and no other fd above stderr, stdin and
//! stdout on /dev/null, stderr shared with the caller, its own process
//! group, no blocked signals and no signal handlers of the caller.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;

use super::child::ChildProcess;
use super::clone::{clone_with, CloneResult};
use super::wire::{fds, Task};

/// Where the handed fds land in the sandbox process, in order.
const TARGETS: [RawFd; HANDED] = [
    fds::CONTROL,
    fds::STDOUT,
    fds::STDERR,
    fds::LOCK,
    fds::INPUT,
];

/// How many fds the sandbox process is handed.
pub const HANDED: usize = 5;

/// How the sandbox process was started.
pub enum Started {
    /// Cloned from this process: the child is the sandbox process.
    Cloned(ChildProcess),
    /// A launcher runs it: send it the task, and it answers with the
    /// sandbox process's pid (`Event::Cloned`).
    Launcher(ChildProcess),
    /// A launcher cloned from this process (in the held user namespace)
    /// runs it: it has the task already, and answers with the pid.
    ClonedLauncher(ChildProcess),
    /// The fork server died with the request (`fork_server.rs`): a
    /// launcher it cloned first answers with the pid on the control
    /// socket; without one, the socket's other end is gone with the server.
    ServerLost,
}

/// Start the sandbox process for `task` with `handed` (control socket,
/// stdout, stderr, lock, input; each a close-on-exec fd numbered above
/// every target) and `null` (a /dev/null opened for writing, likewise
/// numbered high). With `userns`, the sandbox process is made in that user
/// namespace, always by a launcher.
///
/// (`fork_server.rs` has the fork server start it instead, for a caller
/// with threads that has one.)
pub fn start(
    exe: &Path,
    task: &Task,
    handed: &[OwnedFd; HANDED],
    null: &OwnedFd,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<Started> {
    let raw = handed.each_ref().map(|f| f.as_raw_fd());
    let null = null.as_raw_fd();
    match (single_threaded(), userns) {
        (true, None) => clone_child(
            task,
            Becomes::SandboxProcess,
            raw,
            null,
            CloneFlags::empty(),
        )
        .map(Started::Cloned),
        // A launcher cloned from this process joins the held namespace,
        // then does what the exec'd launcher does.
        (true, Some(userns)) => clone_child(
            task,
            Becomes::Launcher(Some(userns)),
            raw,
            null,
            CloneFlags::empty(),
        )
        .map(Started::ClonedLauncher),
        (false, userns) => exec_launcher(exe, raw, userns).map(Started::Launcher),
    }
}

/// The fork server's side of [`start`]: clone a launcher for `task` that
/// is the *caller's* child (`CLONE_PARENT`), joining `userns` first when
/// given; returns its pid.
pub(super) fn clone_launcher_for_caller(
    task: &Task,
    raw: [RawFd; HANDED],
    null: RawFd,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<nix::unistd::Pid> {
    clone_child(
        task,
        Becomes::Launcher(userns),
        raw,
        null,
        CloneFlags::CLONE_PARENT,
    )
    .map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
}

/// True when this process has exactly one thread: a copy of it may then go
/// on running any code.
pub(super) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// What a process cloned from this one becomes.
enum Becomes<'a> {
    /// The task's sandbox process.
    SandboxProcess,
    /// A launcher, in the held user namespace it joins first when given.
    Launcher(Option<BorrowedFd<'a>>),
}

/// Clone this single-threaded process for `task` (with `extra` flags). The
/// child joins the held user namespace when it becomes a launcher with
/// one, takes the handed fds as an exec'd process would, and never
/// returns.
fn clone_child(
    task: &Task,
    becomes: Becomes<'_>,
    raw: [RawFd; HANDED],
    null: RawFd,
    extra: CloneFlags,
) -> io::Result<ChildProcess> {
    let flags = extra
        | match becomes {
            Becomes::SandboxProcess => task.clone_flags(),
            Becomes::Launcher(_) => CloneFlags::empty(),
        };
    // SAFETY: this process has a single thread (checked just before, and
    // only this thread could have started another since), and the child
    // never returns from the helper's entry points.
    match unsafe { clone_with(flags) }? {
        CloneResult::Child => {
            let ready = match becomes {
                Becomes::SandboxProcess | Becomes::Launcher(None) => Ok(()),
                Becomes::Launcher(Some(userns)) => super::userns::join(userns).map_err(|e| {
                    io::Error::new(e.kind(), format!("joining the user namespace: {e}"))
                }),
            }
            .and_then(|()| become_sandbox_process(raw, null));
            if let Err(e) = ready {
                eprintln!("compute-worker: cannot start the sandbox process: {e}");
                // SAFETY: _exit ends this process without running the
                // caller's exit handlers.
                unsafe { libc::_exit(1) }
            }
            match becomes {
                Becomes::SandboxProcess => super::helper::main_cloned(task.clone()),
                Becomes::Launcher(userns) => {
                    super::helper::main_cloned_launcher(task.clone(), userns.is_some())
                }
            }
        }
        CloneResult::Parent(pid) => Ok(ChildProcess::from_pid(pid)),
    }
}

/// Exec the binary as a launcher (`spawn.rs`: no copy of this process),
/// with the handed fds and, to join, the held user namespace.
fn exec_launcher(
    exe: &Path,
    raw: [RawFd; HANDED],
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<ChildProcess> {
    let mut args = vec![OsStr::new(super::helper::LAUNCHER_ARG)];
    let mut fds: Vec<(RawFd, RawFd)> = raw.into_iter().zip(TARGETS).collect();
    if let Some(fd) = userns {
        args.push(OsStr::new(super::helper::JOIN_USERNS_ARG));
        fds.push((fd.as_raw_fd(), fds::USERNS));
    }
    let pid = super::spawn::spawn(exe, &args, &fds)?;
    Ok(ChildProcess::from_pid(pid))
}

/// In the cloned child: the fds, process group and signals an exec'd
/// process would start with.
fn become_sandbox_process(raw: [RawFd; HANDED], null: RawFd) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: dup2, close_range, setpgid, sigaction and sigprocmask act on
    // this process's own fds, process group and signal state only; every
    // struct passed is a zeroed, valid value.
    unsafe {
        for (src, dst) in raw.iter().zip(TARGETS) {
            check(libc::dup2(*src, dst))?;
        }
        check(libc::dup2(null, 0))?;
        check(libc::dup2(null, 1))?;
        // Every other fd of the caller (its end of the control socket
        // above all: the sandbox must see EOF when the caller dies).
        let first = (fds::INPUT + 1) as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) < 0 {
            close_fds_from(first as RawFd);
        }
        check(libc::setpgid(0, 0))?;
        // Handlers do not survive an exec; ignored signals do.
        for sig in 1..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// close_range(2) for kernels without it.
fn close_fds_from(first: RawFd) {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd >= first)
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        // SAFETY: closing an fd number; the child owns its fd table and
        // no Rust object of it is used again.
        unsafe { libc::close(fd) };
    }
}
