//! Starting the launcher from a caller with threads with `posix_spawn(3)`:
//! glibc's child shares the caller's memory until it execs (a clone with
//! `CLONE_VM | CLONE_VFORK`), so nothing of a large caller is copied.
//! std's `Command` forks as soon as fds must land on fixed numbers (a
//! `pre_exec` closure), which copies the page tables of the whole worker
//! (`serve` holds ~9 MB of anonymous memory idle) and makes every page it
//! touches afterwards fault once more.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::Pid;

/// Spawn `exe` with `args`: stdin and stdout on /dev/null, stderr
/// inherited, each `(src, dst)` of `fds` duplicated onto `dst` (every `src`
/// numbered above every `dst`, so that no duplication clobbers another),
/// in a process group of its own, with default signal dispositions and no
/// blocked signal, and this process's environment.
pub fn spawn(exe: &Path, args: &[&OsStr], fds: &[(RawFd, RawFd)]) -> io::Result<Pid> {
    spawn_with_env(exe, args, fds, |_| true)
}

/// [`spawn`], with only the variables of this process's environment that
/// `keep` accepts (by name).
pub fn spawn_with_env(
    exe: &Path,
    args: &[&OsStr],
    fds: &[(RawFd, RawFd)],
    keep: impl Fn(&OsStr) -> bool,
) -> io::Result<Pid> {
    let path = c_string(exe.as_os_str())?;
    let argv: Vec<CString> = std::iter::once(Ok(path.clone()))
        .chain(args.iter().map(|a| c_string(a)))
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            c_string(&kv)
        })
        .collect::<io::Result<_>>()?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);

    let mut actions = FileActions::new()?;
    actions.open(0, c"/dev/null", libc::O_RDONLY)?;
    actions.open(1, c"/dev/null", libc::O_WRONLY)?;
    for &(src, dst) in fds {
        actions.dup2(src, dst)?;
    }
    let attr = Attributes::new()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid until posix_spawn returns (the child
    // has exec'd by then): the strings and their null-terminated arrays
    // live in this frame, the file actions and attributes are initialised.
    let r = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    rc(r)?;
    Ok(Pid::from_raw(pid))
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// posix_spawn's functions return the error number itself.
fn rc(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut a = MaybeUninit::uninit();
        // SAFETY: init fills the struct it is given.
        rc(unsafe { libc::posix_spawn_file_actions_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(FileActions(unsafe { a.assume_init() }))
    }

    fn open(&mut self, fd: RawFd, path: &'static CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: an initialised file actions object, a static path.
        rc(unsafe {
            libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
        })
    }

    fn dup2(&mut self, src: RawFd, dst: RawFd) -> io::Result<()> {
        // SAFETY: an initialised file actions object.
        rc(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, src, dst) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    /// Own process group (a terminal's Ctrl-C reaches the caller, which
    /// then stops the sandbox in order), every signal at its default (the
    /// Rust runtime ignores SIGPIPE, and an ignored signal survives an
    /// exec), none blocked.
    fn new() -> io::Result<Self> {
        let mut a = MaybeUninit::uninit();
        // SAFETY: init fills the struct it is given; the calls after it
        // set fields of that initialised object from valid signal sets.
        unsafe {
            rc(libc::posix_spawnattr_init(a.as_mut_ptr()))?;
            let mut attr = Attributes(a.assume_init());
            let (mut all, mut none) = (MaybeUninit::uninit(), MaybeUninit::uninit());
            libc::sigfillset(all.as_mut_ptr());
            libc::sigemptyset(none.as_mut_ptr());
            rc(libc::posix_spawnattr_setsigdefault(
                &mut attr.0,
                all.as_ptr(),
            ))?;
            rc(libc::posix_spawnattr_setsigmask(&mut attr.0, none.as_ptr()))?;
            rc(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETSIGMASK;
            rc(libc::posix_spawnattr_setflags(
                &mut attr.0,
                flags as libc::c_short,
            ))?;
            Ok(attr)
        }
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
