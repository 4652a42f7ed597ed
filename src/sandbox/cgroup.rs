//! Delegated cgroups: where limits can be enforced, and what the kernel
//! reports back (OOM kills).
//!
//! A rootless process may only create cgroups inside a subtree it owns:
//!
//! * cgroup v2, delegated by systemd (`Delegate=yes`): the worker's own
//!   cgroup, found in `/proc/self/cgroup`, when it belongs to this user
//!   (systemd chowns the directory and its `cgroup.procs`,
//!   `cgroup.subtree_control` and `cgroup.threads` to the unit's user; a
//!   user manager's units all belong to the user). Used with no
//!   configuration.
//! * a v1 or v2 directory an administrator created and chowned to the
//!   user, named by `cgroup_parent` (e.g. `/compute-worker`).
//!
//! Each run gets `<parent>/<run id>`. On v2 the parent's controllers are
//! enabled in its `cgroup.subtree_control`, and the kernel's
//! no-internal-process rule then forbids processes in the parent itself:
//! when the worker runs in the parent (its own delegated cgroup, always),
//! it first moves itself, with every other process there, into the leaf
//! `<parent>/supervisor`. Run cgroups sit beside that leaf rather than in a
//! `runs/` child: one level fewer to create and enable controllers in,
//! and the prefix of run ids tells them apart for the stale-run sweep.
//!
//! Moving a process on v2 needs write access to the `cgroup.procs` of the
//! common ancestor of its old and new cgroups: the worker (whose forks
//! libcontainer moves into each run's cgroup) must run inside the
//! subtree, or at least below an ancestor the user owns.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::unistd::{access, AccessFlags};

use super::types::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// The leaf (under a v2 parent) the worker moves itself into.
pub const LEAF: &str = "supervisor";

/// v2 controllers the worker enables for its runs when the parent has
/// them: the three limits, and `cpu` for its accounting.
pub const V2_WANTED: &[&str] = &["cpu", "cpuset", "memory", "pids"];

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

/// A delegated subtree that this user can create run cgroups in, ready
/// for runs (on v2 the worker sits in its leaf, controllers enabled).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delegation {
    pub version: Version,
    /// Path of the subtree inside the hierarchy, e.g. `/compute-worker`.
    pub parent: PathBuf,
    /// v1 only: mount points of the hierarchies the sandbox must not see
    /// (not delegated, or `devices`, whose rules cannot be written
    /// rootless). The keeper covers them with an empty tmpfs so that
    /// libcontainer's v1 manager, which joins every hierarchy it finds,
    /// skips them harmlessly.
    pub v1_masked: Vec<PathBuf>,
    /// Controllers a run cgroup gets (v2: those enabled in the parent's
    /// `cgroup.subtree_control`; v1: the required hierarchies).
    pub controllers: Vec<String>,
}

/// The cgroup version of the host: v2 when /sys/fs/cgroup is cgroup2,
/// otherwise v1 (legacy or hybrid).
pub fn host_version() -> Version {
    match statfs(ROOT) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => Version::V2,
        _ => Version::V1,
    }
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
pub fn own_cgroup() -> Option<PathBuf> {
    own_cgroup_of(&fs::read_to_string("/proc/self/cgroup").ok()?)
}

fn own_cgroup_of(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| p.is_absolute())
}

/// Directory of the v2 cgroup at `path` (inside the hierarchy).
fn v2_dir(path: &Path) -> PathBuf {
    Path::new(ROOT).join(path.strip_prefix("/").unwrap_or(path))
}

/// Names in a space-separated cgroup file (`cgroup.controllers`, ...).
fn read_list(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Why this user cannot manage the v2 cgroup in `dir`, if it cannot.
fn v2_writable(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
        .map_err(|_| format!("{} is not writable by this user", dir.display()))?;
    for f in ["cgroup.procs", "cgroup.subtree_control"] {
        access(&dir.join(f), AccessFlags::W_OK)
            .map_err(|_| format!("{} is not writable by this user", dir.join(f).display()))?;
    }
    Ok(())
}

/// True when systemd (or an administrator) delegated the v2 cgroup in
/// `dir` to this user: it and its `cgroup.procs` and
/// `cgroup.subtree_control` belong to the user.
fn v2_delegated_to_me(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    ["", "cgroup.procs", "cgroup.subtree_control"]
        .iter()
        .all(|f| fs::metadata(dir.join(f)).is_ok_and(|m| m.uid() == me))
}

/// Where runs could go, as found (nothing changed yet): see [`lookup`].
#[derive(Debug, Clone)]
pub struct Candidate {
    pub version: Version,
    /// Where run cgroups go (inside the hierarchy).
    pub parent: PathBuf,
    /// v2: this process's cgroup.
    pub own: Option<PathBuf>,
    /// Named by `cgroup_parent` (else: this process's delegated cgroup).
    pub configured: bool,
    /// v2: this process runs in `parent` itself and must move into its
    /// leaf before controllers can be enabled there.
    pub must_move: bool,
    /// v2: the controllers `parent` can hand to its children
    /// (`cgroup.controllers`); v1: the required ones.
    pub available: Vec<String>,
    v1_masked: Vec<PathBuf>,
}

/// What the host offers this process for run cgroups.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Candidate),
    /// No subtree named, and none delegated to this process: why.
    Absent(String),
    /// The named subtree cannot be used: why, and what to do.
    Unusable(String),
}

/// Find the subtree runs go in: `configured` (the `cgroup_parent`
/// setting) when given, else on cgroup v2 this process's own cgroup when
/// it is delegated to the user. Reads only; [`Candidate::prepare`] acts.
pub fn lookup(configured: Option<&Path>) -> Lookup {
    match host_version() {
        Version::V1 => match configured {
            None => Lookup::Absent(
                "no cgroup subtree is named with --cgroup-parent or COMPUTE_WORKER_CGROUP_PARENT"
                    .into(),
            ),
            Some(parent) => match v1_candidate(parent) {
                Ok(c) => Lookup::Found(c),
                Err(why) => Lookup::Unusable(why),
            },
        },
        Version::V2 => v2_lookup(configured, own_cgroup()),
    }
}

fn v2_lookup(configured: Option<&Path>, own: Option<PathBuf>) -> Lookup {
    let Some(own) = own else {
        let why = "cannot read this process's cgroup v2 path from /proc/self/cgroup".to_string();
        return match configured {
            None => Lookup::Absent(why),
            Some(_) => Lookup::Unusable(why),
        };
    };
    let parent = match configured {
        Some(p) => Path::new("/").join(p.strip_prefix("/").unwrap_or(p)),
        None => {
            // A worker that already sits in the leaf (a second `exec` in
            // the same delegated cgroup) uses the leaf's parent.
            let own_leaf = own.file_name().is_some_and(|n| n == LEAF);
            match own.parent() {
                Some(up) if own_leaf && v2_delegated_to_me(&v2_dir(up)) => up.to_path_buf(),
                _ if nix::unistd::geteuid().is_root() => {
                    return Lookup::Absent(format!(
                        "running as root in cgroup {}: name a subtree with --cgroup-parent",
                        own.display()
                    ))
                }
                _ if own != Path::new("/") && v2_delegated_to_me(&v2_dir(&own)) => own.clone(),
                _ => {
                    return Lookup::Absent(format!(
                        "this process's cgroup {} is not delegated to this user",
                        own.display()
                    ))
                }
            }
        }
    };
    let dir = v2_dir(&parent);
    if let Err(why) = v2_writable(&dir) {
        return Lookup::Unusable(why);
    }
    let must_move = own == parent;
    if !own.starts_with(&parent) {
        // Moving a process needs write access to the common ancestor of
        // its cgroup and the run's.
        let mut common = own.clone();
        while !parent.starts_with(&common) {
            common.pop();
        }
        let procs = v2_dir(&common).join("cgroup.procs");
        if access(&procs, AccessFlags::W_OK).is_err() {
            return Lookup::Unusable(format!(
                "this process runs in cgroup {own}, outside {parent}: on cgroup v2 moving a \
                 process into a cgroup needs write access to cgroup.procs of the common ancestor \
                 of both ({common}), which this user lacks, so runs cannot be placed in {parent}. \
                 Start the worker inside {parent} (an administrator writes its pid to \
                 {procs_parent}), or leave --cgroup-parent / COMPUTE_WORKER_CGROUP_PARENT unset \
                 and run the worker in a cgroup systemd delegates to it: the user service of \
                 `compute-worker install-service` (Delegate=yes), or `systemd-run --user --scope \
                 -p Delegate=yes compute-worker ...`",
                own = own.display(),
                parent = parent.display(),
                common = common.display(),
                procs_parent = dir.join("cgroup.procs").display(),
            ));
        }
    }
    Lookup::Found(Candidate {
        version: Version::V2,
        available: read_list(&dir.join("cgroup.controllers")),
        parent,
        own: Some(own),
        configured: configured.is_some(),
        must_move,
        v1_masked: Vec::new(),
    })
}

/// Check that `parent` is a subtree this user may create cgroups in, in
/// every v1 controller the runtime will join.
fn v1_candidate(parent: &Path) -> Result<Candidate, String> {
    let rel = parent.strip_prefix("/").unwrap_or(parent);
    let usable = |dir: &Path| -> Result<(), String> {
        if !dir.is_dir() {
            return Err(format!("{} does not exist", dir.display()));
        }
        access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
            .map_err(|_| format!("{} is not writable by this user", dir.display()))
    };
    let mounts = v1_mounts();
    for required in V1_REQUIRED {
        let m = mounts
            .iter()
            .find(|m| controllers_of(m).any(|c| c == *required))
            .ok_or_else(|| format!("the cgroup v1 `{required}` controller is not mounted"))?;
        usable(&m.join(rel))?;
    }
    let v1_masked = mounts
        .into_iter()
        .filter(|m| controllers_of(m).any(|c| c == "devices") || usable(&m.join(rel)).is_err())
        .collect();
    Ok(Candidate {
        version: Version::V1,
        parent: Path::new("/").join(rel),
        own: None,
        configured: true,
        must_move: false,
        available: V1_REQUIRED.iter().map(|c| c.to_string()).collect(),
        v1_masked,
    })
}

impl Candidate {
    /// Make the subtree ready for runs. On v2: move this process (and
    /// every other process of the parent) into the leaf when it runs in
    /// the parent, and enable the wanted controllers the parent has.
    ///
    /// Writing a pid to `cgroup.procs` moves the whole process, every
    /// thread included, so this is sound at any time; callers still do it
    /// before they start threads.
    pub fn prepare(self) -> Result<Delegation, String> {
        if self.version == Version::V1 {
            return Ok(Delegation {
                version: Version::V1,
                parent: self.parent,
                v1_masked: self.v1_masked,
                controllers: self.available,
            });
        }
        let dir = v2_dir(&self.parent);
        if self.must_move {
            let leaf = dir.join(LEAF);
            match fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
            }
            move_all(&dir, &leaf)?;
        }
        let enabled = read_list(&dir.join("cgroup.subtree_control"));
        for c in V2_WANTED {
            let c = c.to_string();
            if self.available.contains(&c) && !enabled.contains(&c) {
                if let Err(e) =
                    write_cgroup_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"))
                {
                    tracing::warn!(
                        "cannot enable the `{c}` controller in {}: {e}",
                        dir.join("cgroup.subtree_control").display()
                    );
                }
            }
        }
        Ok(Delegation {
            version: Version::V2,
            parent: self.parent,
            v1_masked: Vec::new(),
            controllers: read_list(&dir.join("cgroup.subtree_control")),
        })
    }
}

/// One write to a cgroup file (each write is one command to the kernel).
fn write_cgroup_file(file: &Path, value: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(file)?
        .write_all(value.as_bytes())
}

/// Move every process of the v2 cgroup `from` into `to`, until none is
/// left (a process may fork while we move).
fn move_all(from: &Path, to: &Path) -> Result<(), String> {
    let dest = to.join("cgroup.procs");
    for _ in 0..50 {
        let procs = fs::read_to_string(from.join("cgroup.procs"))
            .map_err(|e| format!("reading {}/cgroup.procs: {e}", from.display()))?;
        if procs.trim().is_empty() {
            return Ok(());
        }
        for pid in procs.split_whitespace() {
            match write_cgroup_file(&dest, pid) {
                Ok(()) => {}
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(format!(
                        "cannot move process {pid} from {} into {}: {e}",
                        from.display(),
                        to.display()
                    ))
                }
            }
        }
    }
    Err(format!(
        "processes keep appearing in {} while they are moved into {}",
        from.display(),
        to.display()
    ))
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

/// A limit whose controller the delegated cgroup does not pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs the cgroup `{controller}` controller, which the delegated cgroup {} does \
     not pass to its runs (it has: {have}). Fix: {fix}. Or run without that limit",
    parent.display()
)]
pub struct MissingController {
    /// The limit, as a user names it.
    pub what: &'static str,
    pub controller: &'static str,
    pub parent: PathBuf,
    /// The controllers it has, space-separated (`none`).
    pub have: String,
    /// What to do.
    pub fix: String,
}

/// The uid in a systemd user manager's cgroup path
/// (`.../user@1000.service/...`).
fn user_manager_uid(path: &Path) -> Option<u32> {
    path.iter().find_map(|c| {
        c.to_str()?
            .strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    })
}

impl Delegation {
    /// The cgroup path (inside the hierarchy) of run `id`.
    pub fn run_path(&self, id: &str) -> PathBuf {
        self.parent.join(id)
    }

    pub(super) fn controller_dir(&self, controller: &str, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        match self.version {
            Version::V2 => Path::new(ROOT).join(rel),
            Version::V1 => Path::new(ROOT).join(controller).join(rel),
        }
    }

    /// Refuse limits whose controller the run cgroups would not have: a
    /// run must never go on silently unlimited. (Not the pids limit:
    /// without the `pids` controller, `RLIMIT_NPROC` bounds it.)
    pub fn check_limits(&self, limits: &Limits) -> Result<(), MissingController> {
        let wanted = [
            (
                limits.memory.is_some(),
                "memory",
                "the memory limit (--memory)",
            ),
            (limits.cpus.is_some(), "cpuset", "the cpuset (--cpus)"),
        ];
        let Some((_, controller, what)) = wanted
            .into_iter()
            .find(|(on, c, _)| *on && !self.controllers.iter().any(|have| have == c))
        else {
            return Ok(());
        };
        let have = if self.controllers.is_empty() {
            "none".to_string()
        } else {
            self.controllers.join(" ")
        };
        let fix = match user_manager_uid(&self.parent) {
            Some(uid) => {
                let user = super::idmap::user_name(uid).unwrap_or_else(|| uid.to_string());
                format!(
                    "systemd hands a user's services only the controllers user@.service \
                     delegates (by default cpu memory pids, no cpuset): as root, \
                     `compute-worker setup-host --user {user}` writes \
                     /etc/systemd/system/user@.service.d/delegate.conf \
                     (Delegate=cpu cpuset io memory pids); it applies once user@{uid}.service \
                     restarts (`systemctl restart user@{uid}.service`, or a reboot)"
                )
            }
            None => {
                let up = self.parent.parent().unwrap_or(Path::new("/"));
                format!(
                    "as root, enable it in every cgroup above: `echo +{controller} > {}` \
                     (and so on up to /sys/fs/cgroup); with systemd, the Delegate= setting of \
                     the unit that runs the worker must include {controller}",
                    v2_dir(up).join("cgroup.subtree_control").display()
                )
            }
        };
        Err(MissingController {
            what,
            controller,
            parent: self.parent.clone(),
            have,
            fix,
        })
    }

    /// After libcontainer created the container: fail unless its init
    /// process `pid` (as this process sees pids) is in the run's cgroup at
    /// `path`. libcgroups' v2 manager, rootless, leaves the process where
    /// it was when the kernel refuses the move (EACCES, EROFS), and its
    /// limits would then bind nothing.
    pub fn confirm_joined(&self, path: &Path, pid: i32) -> Result<(), String> {
        let procs = self.controller_dir("memory", path).join("cgroup.procs");
        let text = fs::read_to_string(&procs).unwrap_or_default();
        if text.lines().any(|l| l.trim() == pid.to_string()) {
            return Ok(());
        }
        Err(format!(
            "the sandbox's processes did not land in their cgroup {} ({} does not list \
             them): the kernel refused the move, so the limits would not apply and the run \
             is stopped. Moving a process needs write access to the new cgroup and to the \
             cgroup.procs of {}; `compute-worker doctor` checks the delegation",
            path.display(),
            procs.display(),
            self.parent.display()
        ))
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

    /// True when run cgroups get the `pids` controller.
    pub fn has_pids(&self) -> bool {
        self.controllers.iter().any(|c| c == "pids")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_is_the_unified_line() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/user.slice/a.service\n";
        assert_eq!(
            own_cgroup_of(hybrid),
            Some(PathBuf::from("/user.slice/a.service"))
        );
        assert_eq!(own_cgroup_of("4:memory:/x\n"), None);
    }

    #[test]
    fn user_manager_uid_comes_from_the_path() {
        let p = Path::new("/user.slice/user-1001.slice/user@1001.service/app.slice/cw.service");
        assert_eq!(user_manager_uid(p), Some(1001));
        assert_eq!(user_manager_uid(Path::new("/compute-worker")), None);
    }

    fn v2(parent: &str, controllers: &[&str]) -> Delegation {
        Delegation {
            version: Version::V2,
            parent: parent.into(),
            v1_masked: vec![],
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn a_limit_without_its_controller_is_refused_with_the_fix() {
        let d = v2(
            "/user.slice/user-1001.slice/user@1001.service/app.slice/cw.service",
            &["cpu", "memory", "pids"],
        );
        let mut limits = Limits {
            memory: Some(1 << 30),
            pids: Some(100),
            ..Limits::default()
        };
        assert_eq!(d.check_limits(&limits), Ok(()));
        assert_eq!(d.check_limits(&Limits::default()), Ok(()));
        limits.cpus = Some("0".into());
        let why = d.check_limits(&limits).unwrap_err().to_string();
        assert!(why.contains("`cpuset` controller"), "{why}");
        assert!(why.contains("--cpus"), "{why}");
        assert!(why.contains("delegate.conf"), "{why}");
        assert!(why.contains("user@1001.service"), "{why}");

        let admin = v2("/compute-worker", &["pids"]);
        let why = admin
            .check_limits(&Limits {
                memory: Some(1),
                ..Limits::default()
            })
            .unwrap_err()
            .to_string();
        assert!(why.contains("`memory` controller"), "{why}");
        assert!(
            why.contains("echo +memory > /sys/fs/cgroup/cgroup.subtree_control"),
            "{why}"
        );
    }

    #[test]
    fn a_process_outside_the_cgroup_is_reported() {
        let d = v2("/nonexistent-cw-test", &["memory"]);
        let why = d
            .confirm_joined(Path::new("/nonexistent-cw-test/cw-1"), 42)
            .unwrap_err();
        assert!(why.contains("did not land in their cgroup"), "{why}");
    }
}
