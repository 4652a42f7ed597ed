//! A user namespace made and mapped once, for a caller that starts many
//! sandbox processes (`serve`, `run`, an image pull): each of them then
//! joins it with `setns(2)` instead of getting a new one that
//! `newuidmap`/`newgidmap` must map, two setuid program starts (about 2 ms)
//! per sandbox.
//!
//! Nothing is left running for it: the namespace lives as long as this
//! process holds a file descriptor to it (the process made to create it
//! exits at once). The sharing is the design's "one long-lived user
//! namespace" (podman's shape); every run still gets its own mount, pid,
//! network, ipc, uts and cgroup namespaces, owned by this one. See the
//! README ("One user namespace for many runs") for what that changes.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;

use super::clone::{clone_with, CloneResult};
use super::idmap::{IdMapError, IdMaps};

/// A mapped user namespace, held by a file descriptor.
#[derive(Debug)]
pub struct HeldUserNamespace {
    fd: OwnedFd,
}

impl HeldUserNamespace {
    /// Make a user namespace with `maps` and hold it.
    pub fn create(maps: &IdMaps) -> Result<Self, IdMapError> {
        let failed = |step, source| IdMapError::Hold { step, source };
        let (wait_r, wait_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| failed("pipe", e.into()))?;
        // SAFETY: the child only calls close(2), read(2) and _exit(2), all
        // async-signal-safe, so a caller with threads may make it too.
        let child = match unsafe { clone_with(CloneFlags::CLONE_NEWUSER) }
            .map_err(|e| failed("clone(CLONE_NEWUSER)", e))?
        {
            // SAFETY: raw fds of this process, valid in the child; only
            // async-signal-safe calls, then _exit (no Rust code of the
            // parent's other threads runs on).
            CloneResult::Child => unsafe {
                // Wait until the parent has the namespace (it closes its
                // end of the pipe), then go.
                libc::close(wait_w.as_raw_fd());
                let mut byte = 0u8;
                libc::read(wait_r.as_raw_fd(), (&raw mut byte).cast(), 1);
                libc::_exit(0)
            },
            CloneResult::Parent(pid) => pid,
        };
        drop(wait_r);
        let held = maps.apply(child.as_raw() as u32).and_then(|()| {
            // Numbered high, like every fd handed to a launcher (see
            // `process.rs`): dup2 onto the low numbers cannot clobber it.
            File::open(format!("/proc/{child}/ns/user"))
                .and_then(|f| super::dup_high(f.as_raw_fd()))
                .map(|fd| HeldUserNamespace { fd })
                .map_err(|e| failed("opening /proc/PID/ns/user", e))
        });
        // The child sees the end of the pipe and exits.
        drop(wait_w);
        let _ = waitpid(child, None);
        held
    }
}

impl AsFd for HeldUserNamespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Join the user namespace `fd` refers to: this process becomes root in it
/// with every capability there (the maps were written when it was made).
/// The process must have one thread.
pub fn join(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)
}
