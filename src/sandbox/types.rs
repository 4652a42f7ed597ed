//! What a sandbox run is asked to do, and how it ended.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Bind {
    type Err = String;

    /// `SRC:DST[:ro|:rw]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => return Err(format!("bad bind `{s}`: expected SRC:DST[:ro|:rw]")),
        };
        if !dst.starts_with('/') {
            return Err(format!(
                "bad bind `{s}`: the destination must be an absolute path"
            ));
        }
        if src.is_empty() {
            return Err(format!("bad bind `{s}`: empty source"));
        }
        Ok(Bind {
            source: PathBuf::from(src),
            destination: PathBuf::from(dst),
            read_only,
        })
    }
}

/// The network a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Network {
    /// A new network namespace with only `lo`, up.
    #[default]
    None,
    /// The host's network namespace: every service on the host's
    /// loopback, its abstract unix sockets and its ports are the program's.
    /// Only on explicit request.
    Host,
    /// A new network namespace connected to the outside by `pasta` (a
    /// user-mode network stack, as rootless Podman uses), started for the
    /// run and ended with it: no path to the host's loopback, no port
    /// forwarded either way, DNS through pasta's forwarder.
    Pasta,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
            Network::Pasta => "pasta",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "pasta" => Ok(Network::Pasta),
            _ => Err(format!(
                "unknown network `{s}`: expected `none`, `pasta` or `host`"
            )),
        }
    }
}

/// Resource limits. Memory and cpus are applied through a delegated
/// cgroup when there is one; pids through its `pids` controller, else
/// `RLIMIT_NPROC`; the write limit by the keeper's watch
/// (`write_limit.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
    /// cpuset, e.g. `0-1` or `2,3`.
    pub cpus: Option<String>,
    /// Bytes the run may add to the disk: its upper layer and its
    /// writable binds (`None` or 0: no limit).
    #[serde(default)]
    pub write_max: Option<u64>,
}

impl Limits {
    /// No limit that a cgroup would enforce (memory, pids, cpus).
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids.is_none() && self.cpus.is_none()
    }

    /// A limit that only a cgroup can enforce (memory, cpus).
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some()
    }
}

/// Everything about one run that does not depend on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Root filesystem layers, top-most first. They are only read: the run
    /// writes into an upper layer of its own.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub binds: Vec<Bind>,
    /// Host device nodes bound read-write, without `nodev` (GPUs): a
    /// rootless sandbox cannot create device nodes, only bind them.
    #[serde(default)]
    pub devices: Vec<Bind>,
    pub network: Network,
    pub limits: Limits,
    pub timeout: Option<Duration>,
    pub hostname: String,
    pub read_only: bool,
    /// Keep the upper layer (what the run wrote) instead of deleting it.
    pub keep_upper: bool,
}

impl RunSpec {
    /// A run of `args` on `rootfs` with the defaults of `compute-worker exec`.
    pub fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> Self {
        RunSpec {
            layers: vec![rootfs.into()],
            args,
            env: vec![DEFAULT_PATH.to_string()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            binds: Vec::new(),
            devices: Vec::new(),
            network: Network::None,
            limits: Limits::default(),
            timeout: None,
            hostname: "sandbox".into(),
            read_only: false,
            keep_upper: false,
        }
    }
}

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a sandbox run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal.
    Signaled(i32),
    /// The time limit ran out and the whole sandbox was killed.
    TimedOut,
    /// The kernel's OOM killer ended the program (memory limit reached).
    OomKilled,
    /// The caller asked for the sandbox to be killed.
    Killed,
    /// The run wrote more than its write limit and the whole sandbox was
    /// killed.
    WriteLimitExceeded,
}

/// Exit codes `compute-worker exec` uses for outcomes that are not the
/// program's own.
pub mod exit_code {
    /// The time limit ran out (as GNU `timeout`).
    pub const TIMED_OUT: i32 = 124;
    /// The sandbox could not be set up (as `docker run`/`podman run`).
    pub const SANDBOX_ERROR: i32 = 125;
    /// The command exists but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
    /// The memory limit was hit and the OOM killer ended the program.
    pub const OOM_KILLED: i32 = 123;
    /// Killed on request (revoke, SIGTERM of the caller).
    pub const KILLED: i32 = 137;
    /// The write limit was passed (as a program killed by SIGXFSZ).
    pub const WRITE_LIMIT: i32 = 153;
}

impl Outcome {
    /// The exit code of `compute-worker exec` for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Exited(c) => c,
            Outcome::Signaled(s) => 128 + s,
            Outcome::TimedOut => exit_code::TIMED_OUT,
            Outcome::OomKilled => exit_code::OOM_KILLED,
            Outcome::Killed => exit_code::KILLED,
            Outcome::WriteLimitExceeded => exit_code::WRITE_LIMIT,
        }
    }

    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(c) => write!(f, "exited with code {c}"),
            Outcome::Signaled(s) => write!(f, "killed by signal {s}"),
            Outcome::TimedOut => write!(f, "time limit exceeded: the sandbox was killed"),
            Outcome::OomKilled => write!(
                f,
                "out of memory: the memory limit was reached and the program was killed"
            ),
            Outcome::Killed => write!(f, "killed on request"),
            Outcome::WriteLimitExceeded => write!(
                f,
                "write limit exceeded: the run wrote more than its limit to disk and was killed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse() {
        let b: Bind = "/a:/b:ro".parse().unwrap();
        assert!(b.read_only);
        let b: Bind = "/a:/b".parse().unwrap();
        assert!(!b.read_only);
        assert!("/a:b".parse::<Bind>().is_err());
        assert!("/a".parse::<Bind>().is_err());
        assert!("/a:/b:xx".parse::<Bind>().is_err());
    }
}
