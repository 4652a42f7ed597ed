//! The fork server: a small single-threaded process that clones sandbox
//! launchers for a caller with threads (`serve`, `run`), so that a start
//! no longer execs the 26 MB binary (`process.rs` explains why a threaded
//! caller cannot clone itself).
//!
//! The caller starts it once, before its async runtime, as a fresh exec of
//! the binary (`compute-worker __fork-server`) with a socket on fd 3 and an
//! environment of a few harmless variables: it holds nothing of the
//! worker's memory, environment or secrets. A request is the task (JSON)
//! with the handed fds (control socket, stdout, stderr, lock, input,
//! /dev/null, and the held user namespace when there is one) as
//! `SCM_RIGHTS`; the server clones a launcher with `CLONE_PARENT`, so that
//! the launcher is the caller's child exactly as an exec'd one would be,
//! answers with its pid, and closes every fd of the request.
//!
//! When the server cannot be reached it is started again once; when that
//! fails too the caller execs the launcher as before (logged). A server
//! that dies between reading a request and answering it may have cloned
//! the launcher already: the caller then drops its own copies of the
//! request's fds and reads the control socket, where such a launcher says
//! `Cloned` (and the start goes on with it), or which ends when none was
//! made (and the caller starts one by exec). No start runs twice.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::child::ChildProcess;
use super::process::{self, Started, HANDED};
use super::wire::Task;

/// The hidden subcommand of the server.
pub const SERVER_ARG: &str = "__fork-server";
/// Where the server finds its socket.
const SOCKET_FD: RawFd = 3;
/// The most fds one request carries: the handed ones, /dev/null, the
/// user namespace.
const MAX_FDS: usize = HANDED + 2;
/// The largest task the server reads.
const MAX_TASK: u64 = 64 << 20;
/// The only variables the server gets: what a launcher and its sandbox
/// process read (log filters, locale for messages, backtraces).
const ENV_KEPT: [&str; 6] = [
    "PATH",
    "LANG",
    "LC_ALL",
    "RUST_BACKTRACE",
    super::helper::LOG_VAR,
    "TZ",
];

/// A request as the server reads it.
#[derive(Deserialize)]
struct Request {
    task: Task,
    /// The last fd of the request is the held user namespace.
    userns: bool,
}

/// A request as the caller writes it (the task borrowed, not copied).
#[derive(Serialize)]
struct RequestRef<'a> {
    task: &'a Task,
    userns: bool,
}

/// Start the sandbox process for `task` (see `process::start`): through
/// `server` when this process has threads and a server, else (or when the
/// server cannot be reached, logged) as `process::start` does.
pub(super) fn start(
    server: Option<&ForkServer>,
    exe: &Path,
    task: &Task,
    handed: &[OwnedFd; HANDED],
    null: &OwnedFd,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<Started> {
    if let Some(server) = server.filter(|_| !process::single_threaded()) {
        let raw = handed.each_ref().map(|f| f.as_raw_fd());
        match server.launch(task, raw, null.as_raw_fd(), userns) {
            Ok(pid) => return Ok(Started::ClonedLauncher(ChildProcess::from_pid(pid))),
            Err(LaunchError::Unavailable(why)) => {
                tracing::warn!(
                    "the fork server is unavailable ({why}); starting this sandbox by exec"
                );
            }
            Err(LaunchError::Lost(e)) => {
                tracing::warn!(error = %e, "the fork server died while starting a sandbox");
                return Ok(Started::ServerLost);
            }
        }
    }
    process::start(exe, task, handed, null, userns)
}

/// The launcher of sandbox process `pid` that a dead server cloned: its
/// parent, which must be this process's child (`CLONE_PARENT`).
pub(super) fn launcher_of(pid: i32) -> Option<ChildProcess> {
    let ppid = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let launcher = ppid(pid)?;
    (ppid(launcher)? == std::process::id() as i32)
        .then(|| ChildProcess::from_pid(Pid::from_raw(launcher)))
}

/// Why a launch through the server did not happen.
#[derive(Debug)]
enum LaunchError {
    /// No launcher was made: the caller may start one itself.
    Unavailable(String),
    /// The server died with the request: a launcher may exist.
    Lost(io::Error),
}

/// The caller's handle on its fork server.
pub struct ForkServer {
    exe: PathBuf,
    conn: Mutex<Option<Connection>>,
}

struct Connection {
    pid: Pid,
    socket: UnixStream,
    replies: BufReader<UnixStream>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Our end closes with this struct: the server sees EOF and exits.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let _ = ChildProcess::from_pid(self.pid).wait();
    }
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("exe", &self.exe)
            .finish()
    }
}

impl ForkServer {
    /// Start the server (`exe __fork-server`).
    pub fn start(exe: &Path) -> io::Result<ForkServer> {
        let conn = Connection::start(exe)?;
        tracing::debug!(pid = conn.pid.as_raw(), "fork server started");
        Ok(ForkServer {
            exe: exe.to_path_buf(),
            conn: Mutex::new(Some(conn)),
        })
    }

    /// The server's pid (for tests and logs).
    pub fn pid(&self) -> Option<i32> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref().map(|c| c.pid.as_raw())
    }

    /// Have a launcher cloned for `task` with `raw` (the handed fds),
    /// `null` and `userns`; returns the launcher's pid, a child of this
    /// process.
    fn launch(
        &self,
        task: &Task,
        raw: [RawFd; HANDED],
        null: RawFd,
        userns: Option<BorrowedFd<'_>>,
    ) -> Result<Pid, LaunchError> {
        let payload = serde_json::to_vec(&RequestRef {
            task,
            userns: userns.is_some(),
        })
        .map_err(|e| LaunchError::Unavailable(e.to_string()))?;
        let mut fds: Vec<RawFd> = raw.into_iter().chain([null]).collect();
        fds.extend(userns.map(|u| u.as_raw_fd()));
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if slot.is_none() {
                match Connection::start(&self.exe) {
                    Ok(c) => {
                        tracing::warn!(pid = c.pid.as_raw(), "fork server restarted");
                        *slot = Some(c);
                    }
                    Err(e) => {
                        return Err(LaunchError::Unavailable(format!(
                            "cannot start it again: {e}"
                        )))
                    }
                }
            }
            let conn = slot.as_mut().expect("a connection");
            if let Err(e) = conn.send(&payload, &fds) {
                // Not sent: no launcher exists. Start a new server.
                tracing::warn!(error = %e, attempt, "the fork server is gone");
                *slot = None;
                continue;
            }
            return match conn.reply() {
                Ok(Ok(pid)) => Ok(Pid::from_raw(pid)),
                Ok(Err(why)) => Err(LaunchError::Unavailable(why)),
                Err(e) => {
                    *slot = None;
                    Err(LaunchError::Lost(io::Error::new(
                        e.kind(),
                        format!("the fork server died while starting this sandbox: {e}"),
                    )))
                }
            };
        }
        Err(LaunchError::Unavailable("it died twice in a row".into()))
    }
}

impl Connection {
    fn start(exe: &Path) -> io::Result<Connection> {
        let (ours, theirs) = UnixStream::pair()?;
        let high = super::dup_high(theirs.as_raw_fd())?;
        drop(theirs);
        let pid = super::spawn::spawn_with_env(
            exe,
            &[OsStr::new(SERVER_ARG)],
            &[(high.as_raw_fd(), SOCKET_FD)],
            |k| ENV_KEPT.iter().any(|kept| OsStr::new(kept) == k),
        )?;
        Ok(Connection {
            pid,
            replies: BufReader::new(ours.try_clone()?),
            socket: ours,
        })
    }

    fn send(&mut self, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let header = (payload.len() as u64).to_le_bytes();
        let rights = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(&header)],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != header.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short header"));
        }
        self.socket.write_all(payload)
    }

    fn reply(&mut self) -> io::Result<Result<i32, String>> {
        let mut line = String::new();
        if self.replies.read_line(&mut line)? == 0 {
            let status = ChildProcess::from_pid(self.pid).wait()?;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it exited ({status})"),
            ));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Entry point of `compute-worker __fork-server`: serve requests until the
/// caller's end closes. Never returns.
pub fn main() -> ! {
    // Nothing but stdio and the socket: an fd the worker inherited
    // without close-on-exec (a make jobserver's pipe, say) goes here. The
    // fds of a request then land above the socket, and each is moved above
    // every fd a launcher's fds land on before a clone.
    // SAFETY: close_range closes fds of this fresh process, none of which
    // a Rust object owns yet.
    if unsafe { libc::syscall(libc::SYS_close_range, SOCKET_FD + 1, libc::c_uint::MAX, 0) } < 0 {
        eprintln!(
            "compute-worker fork server: close_range: {}",
            io::Error::last_os_error()
        );
        std::process::exit(1)
    }
    // SAFETY: the caller starts us with the socket on this fd, which
    // nothing else in this process owns.
    let socket = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    loop {
        let (request, fds) = match receive(&socket) {
            Ok(Some(r)) => r,
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("compute-worker fork server: {e}");
                std::process::exit(1)
            }
        };
        let reply = serve(&request, fds).map_err(|e| e.to_string());
        let mut line = serde_json::to_vec(&reply).unwrap_or_default();
        line.push(b'\n');
        if (&socket).write_all(&line).is_err() {
            std::process::exit(0);
        }
    }
}

/// One request: its task and fds (owned here, closed once served).
fn receive(socket: &UnixStream) -> io::Result<Option<(Request, Vec<OwnedFd>)>> {
    let mut header = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these fds in this process
                // for this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    (&*socket).read_exact(&mut header[got..])?;
    let len = u64::from_le_bytes(header);
    if len > MAX_TASK {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "task too large"));
    }
    let mut payload = vec![0u8; len as usize];
    (&*socket).read_exact(&mut payload)?;
    let request: Request = serde_json::from_slice(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((request, fds)))
}

/// Clone the launcher of one request.
fn serve(request: &Request, fds: Vec<OwnedFd>) -> io::Result<i32> {
    let want = HANDED + 1 + usize::from(request.userns);
    if fds.len() != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds with the request, not {want}", fds.len()),
        ));
    }
    // Above every fd number the launcher's fds land on.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|f| super::dup_high(f.as_raw_fd()))
        .collect::<io::Result<_>>()?;
    drop(fds);
    let raw: [RawFd; HANDED] = std::array::from_fn(|i| high[i].as_raw_fd());
    let null = high[HANDED].as_raw_fd();
    let userns = request.userns.then(|| high[HANDED + 1].as_fd());
    let pid = process::clone_launcher_for_caller(&request.task, raw, null, userns)?;
    Ok(pid.as_raw())
}
