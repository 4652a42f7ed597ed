//! A child process of this one, and a pidfd for any process: the handles
//! the sandbox keeps on the processes it starts.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child of this process: the sandbox process itself, or its launcher.
#[derive(Debug)]
pub struct ChildProcess {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// A child of this process started elsewhere (`spawn.rs`).
    pub fn from_pid(pid: Pid) -> Self {
        ChildProcess { pid, status: None }
    }

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

/// A pidfd for `pid` (it stays valid, and pollable for the exit, even
/// after the pid is reused).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
