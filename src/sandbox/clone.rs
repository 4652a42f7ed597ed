//! `clone(2)` with namespace flags and fork semantics: the one primitive
//! every sandbox process, launcher and held user namespace starts from.

use std::io;

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// What `clone_with` returned in one of the two processes.
pub enum CloneResult {
    Parent(Pid),
    Child,
}

/// `clone(2)` with `flags` (namespaces) and fork semantics: the child is a
/// copy of this process on a copy of its stack, and SIGCHLD tells the
/// parent of its end.
///
/// # Safety
/// The child must not return into code that expects the parent's thread
/// identity (it runs to its exit, as libcontainer's own clones do: glibc's
/// cached thread id in the child is the parent's). And either this process
/// is single-threaded, so the child may go on running any code, or the
/// child makes only async-signal-safe calls before `_exit` (as after
/// `fork` in a threaded program: another thread may have held a lock, such
/// as the allocator's, at the time of the copy; `userns.rs` does this).
pub unsafe fn clone_with(flags: CloneFlags) -> io::Result<CloneResult> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a null stack makes clone behave as fork; no pointer
    // arguments are passed; the caller keeps the contract above.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(Pid::from_raw(pid as i32))),
    }
}
