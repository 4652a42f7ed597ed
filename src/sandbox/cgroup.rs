//! Delegated cgroups: where limits can be enforced, and what the kernel
//! reports back (OOM kills).
//!
//! A rootless process may only create cgroups inside a subtree it owns:
//! cgroup v2 delegated by systemd (`Delegate=yes`), or a v1/v2 directory an
//! administrator created and chowned to the user. The worker is told the
//! subtree's path inside the hierarchy (`cgroup_parent`, e.g.
//! `/compute-worker`); each run gets `<parent>/<run id>` under it.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::unistd::{access, AccessFlags};

const ROOT: &str = "/sys/fs/cgroup";

/// Controllers youki's v1 manager joins when it finds them mounted.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// v1 controllers the limits need; a v1 delegation must cover them.
pub const V1_REQUIRED: &[&str] = &["memory", "pids", "cpuset"];

/// A delegated subtree that this user can create run cgroups in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delegation {
    pub version: Version,
    /// Path of the subtree inside the hierarchy, e.g. `/compute-worker`.
    pub parent: PathBuf,
    /// v1 only: mount points of the hierarchies the sandbox must not see
    /// (not delegated, or `devices`, whose rules cannot be written
    /// rootless). The helper covers them with an empty tmpfs so that
    /// libcontainer's v1 manager, which joins every hierarchy it finds,
    /// skips them harmlessly.
    pub v1_masked: Vec<PathBuf>,
}

/// The cgroup version of the host: v2 when /sys/fs/cgroup is cgroup2,
/// otherwise v1 (legacy or hybrid).
pub fn host_version() -> Version {
    match statfs(ROOT) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => Version::V2,
        _ => Version::V1,
    }
}

/// Check that `parent` is a subtree this user may create cgroups in, in
/// every controller the runtime will join.
pub fn delegation(parent: &Path) -> Result<Delegation, String> {
    let rel = parent.strip_prefix("/").unwrap_or(parent);
    let usable = |dir: &Path| -> Result<(), String> {
        if !dir.is_dir() {
            return Err(format!("{} does not exist", dir.display()));
        }
        access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
            .map_err(|_| format!("{} is not writable by this user", dir.display()))
    };
    let version = host_version();
    let mut v1_masked = Vec::new();
    match version {
        Version::V2 => usable(&Path::new(ROOT).join(rel))?,
        Version::V1 => {
            let mounts = v1_mounts();
            for required in V1_REQUIRED {
                let m = mounts
                    .iter()
                    .find(|m| controllers_of(m).any(|c| c == *required))
                    .ok_or_else(|| {
                        format!("the cgroup v1 `{required}` controller is not mounted")
                    })?;
                usable(&m.join(rel))?;
            }
            for m in mounts {
                if controllers_of(&m).any(|c| c == "devices") || usable(&m.join(rel)).is_err() {
                    v1_masked.push(m);
                }
            }
        }
    }
    Ok(Delegation {
        version,
        parent: Path::new("/").join(rel),
        v1_masked,
    })
}

fn controllers_of(mount: &Path) -> impl Iterator<Item = String> {
    let name = mount
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split(',')
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter()
}

/// Mount points of the v1 controllers youki will use.
fn v1_mounts() -> Vec<PathBuf> {
    v1_mounts_in(Path::new(ROOT))
}

/// Mount points of the v1 controllers under `root` (normally
/// `/sys/fs/cgroup`; another root in `setup-host --root` tests).
pub fn v1_mounts_in(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `cpu,cpuacct` style directories are the real mounts; the single
        // names are symlinks to them.
        if e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
            continue;
        }
        if name.split(',').any(|c| V1_CONTROLLERS.contains(&c)) {
            out.push(e.path());
        }
    }
    out
}

impl Delegation {
    /// The cgroup path (inside the hierarchy) of run `id`.
    pub fn run_path(&self, id: &str) -> PathBuf {
        self.parent.join(id)
    }

    fn controller_dir(&self, controller: &str, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        match self.version {
            Version::V2 => Path::new(ROOT).join(rel),
            Version::V1 => Path::new(ROOT).join(controller).join(rel),
        }
    }

    /// cpuset.mems of the parent (cgroup v1 requires it with a cpuset).
    pub fn parent_mems(&self) -> Option<String> {
        let file = match self.version {
            Version::V1 => "cpuset.mems",
            Version::V2 => "cpuset.mems.effective",
        };
        let dir = self.controller_dir("cpuset", &self.parent);
        fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// How many times the OOM killer acted in the cgroup at `path`.
    pub fn oom_kills(&self, path: &Path) -> u64 {
        let dir = self.controller_dir("memory", path);
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    }

    /// Directory names of the hierarchies: one empty name on v2, one per
    /// mounted controller on v1.
    fn hierarchies(&self) -> Vec<String> {
        match self.version {
            Version::V2 => vec![String::new()],
            Version::V1 => v1_mounts()
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        }
    }

    /// Remove the (empty) cgroup at `path` in every hierarchy.
    pub fn remove(&self, path: &Path) {
        for c in self.hierarchies() {
            let _ = remove_cgroup_tree(&self.controller_dir(&c, path));
        }
    }

    /// Remove the run cgroups under the delegated subtree for which
    /// `is_live` is false (left behind by crashed runs). Empty cgroups only.
    pub fn remove_stale(&self, is_live: impl Fn(&str) -> bool) {
        for c in self.hierarchies() {
            let dir = self.controller_dir(&c, &self.parent);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir()
                    && name.starts_with(super::rundir::RUN_PREFIX)
                    && !is_live(&name)
                {
                    let _ = remove_cgroup_tree(&e.path());
                }
            }
        }
    }
}

/// rmdir a cgroup and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_cgroup_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}
