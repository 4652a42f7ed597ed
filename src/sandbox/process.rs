//! Starting the helper process: a fork of the caller when the caller has a
//! single thread (`compute-worker exec` before it starts any), else a fresh
//! exec of the binary with the hidden `__sandbox` subcommand (`serve`, whose
//! tokio threads make a fork that goes on running Rust code unsound).
//!
//! Both give the helper the same start: the handed fds on
//! [`fds::CONTROL`]..[`fds::INPUT`] and no other fd above stderr, stdin and
//! stdout on /dev/null, stderr shared with the caller, its own process
//! group, no blocked signals and no signal handlers of the caller. A fork
//! skips loading and relocating the binary a second time (about a
//! millisecond of every sandbox start).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::wire::fds;

/// Where the handed fds land in the helper, in order.
const TARGETS: [RawFd; HANDED] = [
    fds::CONTROL,
    fds::STDOUT,
    fds::STDERR,
    fds::LOCK,
    fds::INPUT,
];

/// How many fds the helper is handed.
pub const HANDED: usize = 5;

/// The helper process (a child of this process).
#[derive(Debug)]
pub struct HelperProcess {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl HelperProcess {
    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// SIGKILL, unless it has been waited for already.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    /// Wait for it to exit (once; later calls give the same status).
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut raw = 0;
        loop {
            // SAFETY: waitpid writes the status into `raw`, a live c_int.
            let r = unsafe { libc::waitpid(self.pid.as_raw(), &mut raw, 0) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        Ok(status)
    }
}

/// Start the helper with `handed` (control socket, stdout, stderr, lock;
/// each a close-on-exec fd numbered above every target) and `null` (a
/// /dev/null opened for writing, likewise numbered high).
pub fn start(exe: &Path, handed: &[OwnedFd; HANDED], null: &OwnedFd) -> io::Result<HelperProcess> {
    let raw = handed.each_ref().map(|f| f.as_raw_fd());
    if single_threaded() {
        fork_helper(raw, null.as_raw_fd())
    } else {
        exec_helper(exe, raw)
    }
}

/// True when this process has exactly one thread: a fork is then a full
/// copy of it that may go on running any code.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

fn exec_helper(exe: &Path, raw: [RawFd; HANDED]) -> io::Result<HelperProcess> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__sandbox")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Own process group: a terminal's Ctrl-C reaches the caller,
        // which then stops the sandbox in order.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (src, dst) in raw.iter().zip(TARGETS) {
                if libc::dup2(*src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The pid is all we keep: we wait for it ourselves (dropping a `Child`
    // neither kills nor reaps it).
    let child = cmd.spawn()?;
    Ok(HelperProcess {
        pid: Pid::from_raw(child.id() as i32),
        status: None,
    })
}

fn fork_helper(raw: [RawFd; HANDED], null: RawFd) -> io::Result<HelperProcess> {
    // SAFETY: this process has a single thread (checked just before, and
    // only this thread could have started another since), so the child is
    // a consistent copy of it and may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            if let Err(e) = become_helper(raw, null) {
                eprintln!("compute-worker: cannot start the sandbox helper: {e}");
                // SAFETY: _exit ends this process without running the
                // caller's exit handlers.
                unsafe { libc::_exit(1) }
            }
            super::helper::main_forked()
        }
        pid => Ok(HelperProcess {
            pid: Pid::from_raw(pid),
            status: None,
        }),
    }
}

/// In the forked child: the fds, process group and signals an exec'd
/// helper would start with.
fn become_helper(raw: [RawFd; HANDED], null: RawFd) -> io::Result<()> {
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
        // above all: the helper must see EOF when the caller dies).
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
