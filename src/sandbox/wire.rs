//! Messages between the caller and a sandbox process (or its launcher), one
//! JSON object per line on a Unix socket pair (fd 3 in the sandbox).

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::cgroup::Delegation;
use super::types::{Network, Outcome, RunSpec};
use super::usage::Usage;

/// File descriptors the sandbox process is started with.
pub mod fds {
    pub const CONTROL: i32 = 3;
    pub const STDOUT: i32 = 4;
    pub const STDERR: i32 = 5;
    pub const LOCK: i32 = 6;
    /// The layer stream of an `Unpack` task.
    pub const INPUT: i32 = 7;
    /// The held user namespace, for a launcher that joins it (only until
    /// it has).
    pub const USERNS: i32 = 8;
}

/// What a sandbox process is asked to do inside its user namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Task {
    /// Run a program in a sandbox.
    Run {
        run: Box<RunSpec>,
        id: String,
        rundir: PathBuf,
        /// Mount point of the keeper's scratch tmpfs.
        scratch: PathBuf,
        cgroup: Option<Delegation>,
        /// The seccomp filter the program runs under.
        seccomp: Option<super::seccomp::Program>,
    },
    /// Delete directories whose files belong to subordinate ids.
    Remove { paths: Vec<PathBuf> },
    /// Unpack an image layer, read from fd [`fds::INPUT`], so that its
    /// files keep their owners (uid 33 in the image is uid 33 in the sandbox).
    Unpack {
        media_type: String,
        dest: PathBuf,
        opts: rootfs_cache::UnpackOptions,
    },
    /// The `rootfs_cache::tree_digest` of an unpacked layer, its owners
    /// seen as in the sandbox.
    TreeDigest { dir: PathBuf },
    /// Mount an overlay in a new mount namespace as a run would (the
    /// `doctor` check): `dir` holds `lower/`, `upper/`, `work/`, `merged/`.
    ProbeOverlay { dir: PathBuf },
}

impl Task {
    /// The namespaces the task's process is cloned into: always a user
    /// namespace; for a run also mount, pid (its process is the keeper, pid
    /// 1 there) and, unless the host's network is asked for, network
    /// namespaces; for the
    /// overlay probe a mount namespace.
    pub fn clone_flags(&self) -> CloneFlags {
        let user = CloneFlags::CLONE_NEWUSER;
        match self {
            Task::Run { run, .. } => {
                let mut f = user | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
                if run.network != Network::Host {
                    f |= CloneFlags::CLONE_NEWNET;
                }
                f
            }
            Task::ProbeOverlay { .. } => user | CloneFlags::CLONE_NEWNS,
            Task::Remove { .. } | Task::Unpack { .. } | Task::TreeDigest { .. } => user,
        }
    }
}

/// Caller → sandbox process.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Command {
    /// The id maps of the sandbox's new user namespace are written (never
    /// sent in a held one, mapped when it was made).
    Mapped,
    /// The run's network namespace is connected (`Network::Pasta`): the
    /// program may start.
    NetworkReady,
    /// Kill the sandbox now.
    Kill,
}

/// Sandbox process (or launcher) → caller.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    /// From a launcher: the sandbox process is cloned (`pid` in the
    /// caller's pid namespace); in a new user namespace it waits for its
    /// id maps, in a held one it goes on at once.
    Cloned { pid: i32 },
    /// The program runs; `pid` is its pid in the keeper's pid namespace;
    /// `times` is what the keeper's part of the start took.
    Started {
        pid: i32,
        times: super::phases::KeeperTimes,
    },
    /// The program and everything it started are gone.
    Finished { outcome: Outcome, usage: Usage },
    /// The sandbox could not be set up; `code` is the exit code to use.
    Failed { message: String, code: i32 },
    /// A `Remove` task is done.
    Removed { errors: Vec<String> },
    /// An `Unpack` task is done.
    Unpacked {
        result: Result<rootfs_cache::UnpackReport, UnpackFailure>,
    },
    /// A `TreeDigest` task is done.
    TreeDigested { result: Result<String, String> },
    /// A `ProbeOverlay` task is done.
    Probed { result: Result<(), String> },
}

/// Why an `Unpack` task failed: the message, and the system error number
/// behind it (so that a full disk is told from a bad layer).
#[derive(Debug, Serialize, Deserialize)]
pub struct UnpackFailure {
    pub message: String,
    pub errno: Option<i32>,
}

impl From<&rootfs_cache::Error> for UnpackFailure {
    fn from(e: &rootfs_cache::Error) -> Self {
        UnpackFailure {
            message: e.to_string(),
            errno: e.os_error(),
        }
    }
}

pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Read the next message; `Ok(None)` at end of stream.
pub fn recv<T: DeserializeOwned>(r: &mut impl BufRead) -> io::Result<Option<T>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
