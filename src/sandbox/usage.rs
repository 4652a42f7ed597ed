//! What one run used: wall and CPU time, peak memory, the OOM killer,
//! peak processes, bytes written. The keeper reads it after the run's
//! last process is reaped and before the run's cgroup is removed.
//!
//! Sources, best first:
//! - cgroup v2: `memory.peak`, `memory.events` (`oom_kill`), `cpu.stat`
//!   (`user_usec`, `system_usec`), `pids.peak`;
//! - cgroup v1: `memory.max_usage_in_bytes` (page cache included),
//!   `memory.oom_control` (`oom_kill`), `cpuacct.usage_user`/`usage_sys`;
//!   v1 has no peak of processes: the keeper samples `pids.current`
//!   every [`PIDS_SAMPLE_EVERY`] while the program runs;
//! - without a delegated cgroup, `getrusage(RUSAGE_CHILDREN)` of the
//!   keeper, which reaps every process of the sandbox (pid 1 of its pid
//!   namespace): CPU time of them all, and the peak resident set of the
//!   largest single process (not their sum); no count of processes.
//!
//! A counter the cgroup lacks (a controller not delegated) is taken from
//! `getrusage` instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroup::{Delegation, Version};

/// How often `pids.current` is read on cgroup v1.
pub const PIDS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Where a [`Usage`]'s memory and CPU figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UsageSource {
    CgroupV2,
    CgroupV1,
    #[default]
    Getrusage,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::CgroupV2 => "cgroup v2",
            UsageSource::CgroupV1 => "cgroup v1",
            UsageSource::Getrusage => "getrusage",
        }
    }
}

/// How a peak number of processes was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidsPeak {
    /// The kernel's own peak (`pids.peak`, cgroup v2).
    Counted(u64),
    /// The highest `pids.current` seen, read every [`PIDS_SAMPLE_EVERY`].
    Sampled(u64),
}

impl PidsPeak {
    pub fn value(self) -> u64 {
        match self {
            PidsPeak::Counted(n) | PidsPeak::Sampled(n) => n,
        }
    }
}

/// What one run used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Where memory and CPU were read.
    pub source: UsageSource,
    /// From the program's start to its end.
    pub wall: Duration,
    pub cpu_user: Duration,
    pub cpu_system: Duration,
    /// Peak memory in bytes: of the whole run from a cgroup; with
    /// `getrusage`, of its largest process.
    pub peak_memory: Option<u64>,
    /// Times the kernel's OOM killer acted in the run (cgroup only).
    pub oom_kills: u64,
    /// Peak number of processes (`None`: no cgroup `pids` controller).
    pub peak_pids: Option<PidsPeak>,
    /// Bytes the run added to the disk: its upper layer and writable
    /// binds, from before its start to its end.
    pub written: Option<u64>,
}

/// Reads `pids.current` of a v1 run cgroup while the program runs.
pub struct PidsSampler {
    file: PathBuf,
    next: Instant,
    peak: u64,
}

impl PidsSampler {
    /// A sampler for the run cgroup at `path`, when only sampling can
    /// tell its peak (cgroup v1 with the `pids` controller).
    pub fn new(d: Option<&Delegation>, path: Option<&Path>) -> Option<PidsSampler> {
        let (d, path) = (d?, path?);
        if d.version != Version::V1 || !d.has_pids() {
            return None;
        }
        Some(PidsSampler {
            file: d.controller_dir("pids", path).join("pids.current"),
            next: Instant::now(),
            peak: 0,
        })
    }

    /// When the next sample is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Read the current count now.
    pub fn sample(&mut self) {
        if let Some(n) = read_u64(&self.file) {
            self.peak = self.peak.max(n);
        }
        self.next = Instant::now() + PIDS_SAMPLE_EVERY;
    }

    pub fn peak(&self) -> PidsPeak {
        PidsPeak::Sampled(self.peak)
    }
}

/// What the keeper measured itself while the run went.
#[derive(Debug, Default)]
pub struct Measured {
    pub wall: Duration,
    pub written: Option<u64>,
    pub sampled_pids: Option<PidsPeak>,
}

/// The usage of a run whose processes are all reaped: from its cgroup at
/// `path` when there is one, else (and for what it lacks) from
/// `getrusage` of the calling keeper's children.
pub fn read(d: Option<&Delegation>, path: Option<&Path>, measured: Measured) -> Usage {
    let rusage = children_rusage();
    let mut u = Usage {
        source: UsageSource::Getrusage,
        wall: measured.wall,
        cpu_user: rusage.as_ref().map_or(Duration::ZERO, |r| r.0),
        cpu_system: rusage.as_ref().map_or(Duration::ZERO, |r| r.1),
        peak_memory: rusage.as_ref().map(|r| r.2),
        oom_kills: 0,
        peak_pids: measured.sampled_pids,
        written: measured.written,
    };
    let (Some(d), Some(path)) = (d, path) else {
        return u;
    };
    u.oom_kills = d.oom_kills(path);
    let memory = d.controller_dir("memory", path);
    match d.version {
        Version::V2 => {
            if let Some(peak) = read_u64(&memory.join("memory.peak")) {
                u.source = UsageSource::CgroupV2;
                u.peak_memory = Some(peak);
            }
            let stat = fs::read_to_string(memory.join("cpu.stat")).unwrap_or_default();
            let usec = |key| keyed(&stat, key).map(Duration::from_micros);
            if let (Some(user), Some(system)) = (usec("user_usec"), usec("system_usec")) {
                (u.cpu_user, u.cpu_system) = (user, system);
            }
            if let Some(n) = read_u64(&memory.join("pids.peak")) {
                u.peak_pids = Some(PidsPeak::Counted(n));
            }
        }
        Version::V1 => {
            if let Some(peak) = read_u64(&memory.join("memory.max_usage_in_bytes")) {
                u.source = UsageSource::CgroupV1;
                u.peak_memory = Some(peak);
            }
            let cpuacct = d.controller_dir("cpuacct", path);
            let ns = |file| read_u64(&cpuacct.join(file)).map(Duration::from_nanos);
            if let (Some(user), Some(system)) = (ns("cpuacct.usage_user"), ns("cpuacct.usage_sys"))
            {
                (u.cpu_user, u.cpu_system) = (user, system);
            }
        }
    }
    u
}

/// User and system CPU time, and the largest peak resident set in bytes,
/// of the calling process's reaped children.
fn children_rusage() -> Option<(Duration, Duration, u64)> {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok()?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    // ru_maxrss is in KiB on Linux.
    let maxrss = (r.max_rss().max(0) as u64).saturating_mul(1024);
    Some((d(r.user_time()), d(r.system_time()), maxrss))
}

fn read_u64(file: &Path) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let stat = "usage_usec 30\nuser_usec 20\nsystem_usec 10\n";
        assert_eq!(keyed(stat, "user_usec"), Some(20));
        assert_eq!(keyed(stat, "system_usec"), Some(10));
        assert_eq!(keyed(stat, "nr_periods"), None);
    }

    #[test]
    fn without_a_cgroup_the_source_is_getrusage() {
        let u = read(None, None, Measured::default());
        assert_eq!(u.source, UsageSource::Getrusage);
        assert_eq!(u.peak_pids, None);
    }
}
