//! In single-id mode (see `id_mode.rs`) the sandbox has one uid and one
//! gid, so changing a file's owner or a process's ids cannot work; package
//! managers and images that drop privileges stop on the error. As enroot
//! does, the filter answers these system calls with success (ERRNO(0))
//! without running them: nothing changes, and nothing is gained either.
//! The 32-bit names are the i386 (and arm) tables the filter covers.

/// Answered with 0 and not run, in single-id mode only.
pub const NO_EFFECT: &[&str] = &[
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "fchownat",
    "lchown",
    "lchown32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
];
