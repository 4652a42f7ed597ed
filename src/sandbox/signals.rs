//! The signal state a container's program starts with, as under runc:
//! every disposition at its default and no signal blocked. An exec resets
//! handlers but keeps ignored signals and the mask, and the processes
//! before the program ignore some: the Rust runtime of the caller, the
//! launcher and the keeper ignores SIGPIPE (so `yes | head` would never end
//! in a sandbox), and glibc's posix_spawn leaves its internal signals (32,
//! 33) ignored in the launcher.

use std::io;

/// The kernel's `struct sigaction` (handler, flags, restorer, mask: the
/// layout of x86_64 and of the generic ABI that aarch64 uses). All zeros
/// is SIG_DFL with no flags and an empty mask.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Set every signal's disposition to default and unblock every signal.
/// Called in the container's init process just before it execs the
/// program (single-threaded, nothing of it runs after the exec). The raw
/// system call, because glibc's `sigaction` refuses its internal signals.
pub fn reset_for_exec() -> io::Result<()> {
    let dfl = KernelSigaction::default();
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads the struct we pass (alive for the
        // call, of the kernel's layout, sigsetsize 8) and writes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("resetting signal {sig}: {e}"),
            ));
        }
    }
    let none = 0u64;
    // SAFETY: rt_sigprocmask reads the 8-byte set we pass and writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
