//! The network of a `Network::Pasta` run: its own network namespace (made
//! with the keeper, as for `none`), connected to the outside by `pasta`
//! (Debian package `passt`), the user-mode network stack rootless Podman
//! uses. pasta turns the packets the namespace sends on its tap interface
//! into ordinary sockets of the worker's user on the host: a program can
//! reach what the worker could reach, except the host's loopback
//! (`--no-map-gw`), and nothing on the host reaches into the namespace (no
//! port forwarded either way).
//!
//! pasta must end with the run, whatever ends it. The caller starts a small
//! supervisor (`compute-worker __pasta`, single-threaded) with the keeper's
//! pidfd and namespaces; the supervisor starts pasta with
//! `PR_SET_PDEATHSIG` and ends it (and reaps it) once the keeper is gone.
//! The keeper goes when the run ends, is killed, or its caller dies, so
//! pasta never outlives the run, even if the worker is killed; if the
//! supervisor itself is killed, the kernel kills pasta.
//!
//! Readiness: pasta writes its pid to its `--pid` file "once
//! initialisation is done"; that file is a pipe back to the caller, who
//! then tells the keeper (`Command::NetworkReady`) that the program may
//! start.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use super::child::{pidfd_open, ChildProcess};
use super::types::exit_code;
use super::SandboxError;

/// The address the run's `/etc/resolv.conf` names: pasta maps UDP port 53
/// on it to the host's first resolver (as Podman's pasta setup does).
pub const DNS_FORWARD: &str = "169.254.1.1";

/// The hidden subcommand that makes the binary the supervisor of one
/// run's pasta.
pub const SUPERVISOR_ARG: &str = "__pasta";

/// The program started; found in `PATH`.
pub const PASTA: &str = "pasta";

/// How long pasta may take to connect a namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The fds the supervisor is started with.
mod fds {
    /// A pidfd of the run's keeper.
    pub const KEEPER: i32 = 3;
    /// The keeper's user namespace.
    pub const USERNS: i32 = 4;
    /// The keeper's network namespace.
    pub const NETNS: i32 = 5;
    /// Write end of the readiness pipe (pasta's `--pid` file).
    pub const READY: i32 = 6;
}

/// The run's `/etc/resolv.conf`.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS_FORWARD}\n")
}

/// pasta's arguments: join the namespaces on the supervisor's fds,
/// configure the interface from the host's, no path to the host's
/// loopback, no port forwarded in either direction, DNS forwarded from
/// [`DNS_FORWARD`], in the foreground, quiet. Started as root (a worker
/// run by root), pasta would switch to `nobody`, which may not enter the
/// run's user namespace (root owns it): it is told to stay who it is.
pub fn pasta_args() -> Vec<String> {
    let fd = |n: i32| format!("/proc/self/fd/{n}");
    let runas = nix::unistd::geteuid()
        .is_root()
        .then(|| ["--runas".to_string(), "0:0".to_string()]);
    [
        "--config-net",
        "--foreground",
        "--quiet",
        "--no-map-gw",
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
        "--dns-forward",
        DNS_FORWARD,
    ]
    .into_iter()
    .map(String::from)
    .chain([
        "--userns".into(),
        fd(fds::USERNS),
        "--netns".into(),
        fd(fds::NETNS),
        "--pid".into(),
        fd(fds::READY),
    ])
    .chain(runas.into_iter().flatten())
    .collect()
}

/// pasta as found in `PATH`.
pub fn find_pasta() -> Option<PathBuf> {
    which::which(PASTA).ok()
}

/// What pasta needs on this host, for `doctor`: the program, and a
/// `/dev/net/tun` the worker's user can open (pasta opens it inside the
/// run's namespaces, still as that user for the device's permissions).
pub fn host_check() -> Result<PathBuf, String> {
    let pasta = find_pasta().ok_or_else(|| {
        "pasta is not installed (Debian/Ubuntu: apt-get install passt)".to_string()
    })?;
    match File::options().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => Ok(pasta),
        Err(e) => Err(format!(
            "/dev/net/tun cannot be opened by this user ({e}): pasta needs it. A host with udev \
             makes it mode 0666 (its default rule); elsewhere run as root \
             `chmod 0666 /dev/net/tun` (creating a tap device still needs \
             CAP_NET_ADMIN in the device's network namespace)"
        )),
    }
}

/// The supervisor of one run's pasta, as its caller holds it.
pub struct NetStack {
    supervisor: ChildProcess,
    finished: bool,
}

impl NetStack {
    /// Connect the network namespace of the keeper `keeper` (a pid in our
    /// pid namespace; its user namespace mapped): start the supervisor,
    /// and return once pasta has configured the namespace.
    pub fn start(binary: &Path, keeper: i32) -> Result<NetStack, SandboxError> {
        let setup = |message: String| SandboxError::Setup {
            message,
            code: exit_code::SANDBOX_ERROR,
        };
        let pidfd = pidfd_open(Pid::from_raw(keeper))
            .map_err(|e| setup(format!("the sandbox process: {e:#}")))?;
        let userns = File::open(format!("/proc/{keeper}/ns/user"))?;
        let netns = File::open(format!("/proc/{keeper}/ns/net"))?;
        // The pidfd came first: while it says the keeper lives, the pid
        // was not reused and the namespaces opened are the keeper's.
        if exited(pidfd.as_fd())? {
            return Err(SandboxError::Lost(
                "the sandbox process ended before its network was connected".into(),
            ));
        }
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let handed = [
            super::dup_high(pidfd.as_raw_fd())?,
            super::dup_high(userns.as_raw_fd())?,
            super::dup_high(netns.as_raw_fd())?,
            super::dup_high(ready_w.as_raw_fd())?,
        ];
        let pairs: Vec<(RawFd, RawFd)> = handed
            .iter()
            .map(|f| f.as_raw_fd())
            .zip([fds::KEEPER, fds::USERNS, fds::NETNS, fds::READY])
            .collect();
        let pid = super::spawn::spawn(binary, &[OsStr::new(SUPERVISOR_ARG)], &pairs).map_err(
            |source| SandboxError::Spawn {
                exe: binary.to_path_buf(),
                source,
            },
        )?;
        drop((handed, ready_w, pidfd, userns, netns));
        let mut stack = NetStack {
            supervisor: ChildProcess::from_pid(pid),
            finished: false,
        };
        match wait_ready(File::from(ready_r), READY_TIMEOUT) {
            Ok(()) => Ok(stack),
            Err(why) => {
                // pasta gone: the supervisor says why and exits.
                if !why.ended {
                    stack.supervisor.kill();
                }
                stack.finish();
                let why = why.message;
                Err(setup(format!(
                    "pasta could not connect the run's network: {why} (its own message, if any, \
                     is in the worker's log; `compute-worker doctor` checks what it needs)"
                )))
            }
        }
    }

    /// Wait until pasta is gone: call once the keeper has ended (the
    /// supervisor then ends pasta, reaps it and exits).
    pub fn finish(&mut self) {
        let _ = self.supervisor.wait();
        self.finished = true;
    }
}

impl Drop for NetStack {
    /// A stack never finished (its sandbox dropped without a wait): kill
    /// the supervisor, and the kernel kills pasta with it.
    fn drop(&mut self) {
        if !self.finished {
            self.supervisor.kill();
            let _ = self.supervisor.wait();
        }
    }
}

/// True when the process of `pidfd` has ended.
fn exited(pidfd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(n > 0)
}

/// Why pasta never got ready.
struct NotReady {
    message: String,
    /// pasta is gone (else it is stuck).
    ended: bool,
}

/// Read pasta's pid line from the readiness pipe.
fn wait_ready(pipe: File, timeout: Duration) -> Result<(), NotReady> {
    read_ready(pipe, timeout).map_err(|(message, ended)| NotReady { message, ended })
}

fn read_ready(mut pipe: File, timeout: Duration) -> Result<(), (String, bool)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((format!("not ready after {}s", timeout.as_secs()), false));
        }
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
            Err(e) => return Err((format!("poll: {e}"), false)),
            Ok(_) => {}
        }
        let mut buf = [0u8; 64];
        match pipe.read(&mut buf) {
            Ok(0) => return Err(("pasta exited before it was ready".into(), true)),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((format!("reading pasta's pid: {e}"), false)),
        }
    }
}

/// Entry point of `compute-worker __pasta`. Never returns.
pub fn supervisor_main() -> ! {
    let code = match supervise() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("compute-worker pasta: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

/// Start pasta on the handed namespaces; end it once the keeper is gone.
fn supervise() -> Result<()> {
    // SAFETY: the caller starts us with the keeper's pidfd on this fd, and
    // nothing else in this process owns it.
    let keeper = unsafe { OwnedFd::from_raw_fd(fds::KEEPER) };
    // pasta needs the namespaces and the readiness pipe, not the pidfd.
    nix::fcntl::fcntl(
        keeper.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("fcntl")?;
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(PASTA);
    cmd.args(pasta_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: prctl and getppid are async-signal-safe and touch only this
    // (child) process; this process has one thread.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent.as_raw() {
                return Err(io::Error::other("the supervisor is gone"));
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .context("starting pasta (is passt installed?)")?;
    // Only pasta holds these now: the readiness pipe ends with it.
    for fd in [fds::USERNS, fds::NETNS, fds::READY] {
        // SAFETY: closing fds the caller handed us and nothing here uses.
        unsafe { libc::close(fd) };
    }
    let pasta = pidfd_open(Pid::from_raw(child.id() as i32))?;
    loop {
        let mut fds = [
            PollFd::new(keeper.as_fd(), PollFlags::POLLIN),
            PollFd::new(pasta.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
            Ok(_) => {}
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if ready(&fds[1]) {
            let status = child.wait()?;
            bail!("pasta ended while its run goes on ({status}): the run has no network now");
        }
    }
}
