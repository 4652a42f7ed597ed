//! `compute-worker setup-host --user NAME`: prepare a host for a worker
//! user, as root, once. Each step first looks at what is there and plans
//! only the changes still needed, so a second run changes nothing (and says
//! so) and `--dry-run` prints exactly the plan.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sandbox::cgroup;

/// Where subordinate ranges start (as useradd's SUB_UID_MIN).
const SUB_ID_MIN: u64 = 100_000;
/// Range size given to the user (as useradd's SUB_UID_COUNT).
const SUB_ID_COUNT: u64 = 65_536;
/// The cgroup v2 drop-in that makes systemd delegate controllers to every
/// user manager.
const DELEGATE_DROP_IN: &str = "etc/systemd/system/user@.service.d/delegate.conf";
const DELEGATE_TEXT: &str =
    "# Written by `compute-worker setup-host`: let user managers (and the\n\
# worker's user service) create cgroups with these controllers.\n\
[Service]\nDelegate=cpu cpuset io memory pids\n";

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a program.
    Run(Vec<String>),
    /// Append `line` to a subordinate id file (under its lock, atomically).
    AppendSubId { file: PathBuf, line: String },
    /// Create a directory (and its parents).
    Mkdir(PathBuf),
    /// Copy a file's content (cgroup v1 `cpuset.cpus`/`mems`).
    Copy { from: PathBuf, to: PathBuf },
    /// Write a file (replacing it atomically).
    Write { path: PathBuf, text: String },
    /// chown a path (and everything under it) to the user.
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        recursive: bool,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Run(argv) => write!(
                f,
                "run: {}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
            ),
            Action::AppendSubId { file, line } => {
                write!(f, "append `{line}` to {}", file.display())
            }
            Action::Mkdir(p) => write!(f, "mkdir -p {}", p.display()),
            Action::Copy { from, to } => write!(f, "cp {} {}", from.display(), to.display()),
            Action::Write { path, text } => {
                write!(
                    f,
                    "write {}:\n    {}",
                    path.display(),
                    text.trim_end().replace('\n', "\n    ")
                )
            }
            Action::Chown {
                path,
                uid,
                gid,
                recursive,
            } => write!(
                f,
                "chown {}{uid}:{gid} {}",
                if *recursive { "-R " } else { "" },
                path.display()
            ),
        }
    }
}

/// One step of the set-up: what it found, what it will change.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    /// What is there already, or why the step is skipped.
    pub note: String,
    pub actions: Vec<Action>,
}

/// The worker's user as the passwd database knows it.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl User {
    pub fn lookup(name: &str) -> Result<User> {
        let u = nix::unistd::User::from_name(name)
            .with_context(|| format!("looking up user {name}"))?
            .with_context(|| {
                format!("no user `{name}`: create it first (`useradd --create-home {name}`)")
            })?;
        Ok(User {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        })
    }
}

/// Every step, with the changes still needed.
/// `root`: where the host's `/` is (another directory in tests).
pub fn plan(root: &Path, cgroup_parent: &Path, user: &User) -> Result<Vec<Step>> {
    let real_root = root == Path::new("/");
    let mut steps = vec![subordinate_ids(root, user, real_root)?];
    steps.extend(cgroups(root, cgroup_parent, user, real_root)?);
    steps.push(linger(root, user, real_root));
    steps.push(cache(root, user));
    Ok(steps)
}

/// The user's default state and image directories (as `serve` computes
/// them for that user with no XDG variables set).
pub fn cache_dirs(user: &User) -> (PathBuf, PathBuf) {
    (
        user.home.join(".local/state/compute-worker"),
        user.home.join(".local/share/compute-worker/images"),
    )
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// `(owner, start, count)` of every range in a subordinate id file.
fn parse_ranges(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.trim().split(':');
            let owner = it.next()?.to_string();
            let start = it.next()?.parse().ok()?;
            let count = it.next()?.parse().ok()?;
            Some((owner, start, count))
        })
        .collect()
}

/// The first start at or above [`SUB_ID_MIN`] where `count` ids overlap
/// none of `taken` (as useradd picks).
pub fn first_free(taken: &[(u64, u64)], count: u64) -> u64 {
    let mut ranges = taken.to_vec();
    ranges.sort();
    let mut start = SUB_ID_MIN;
    for (s, c) in ranges {
        if s < start + count && s + c > start {
            start = s + c;
        }
    }
    start
}

fn subordinate_ids(root: &Path, user: &User, real_root: bool) -> Result<Step> {
    let files = ["etc/subuid", "etc/subgid"].map(|f| root.join(f));
    let mut texts = Vec::new();
    for f in &files {
        texts.push(match fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        });
    }
    let ranges: Vec<Vec<(String, u64, u64)>> = texts.iter().map(|t| parse_ranges(t)).collect();
    let uid_text = user.uid.to_string();
    let mine = |r: &Vec<(String, u64, u64)>| {
        r.iter()
            .find(|(o, _, c)| (*o == user.name || *o == uid_text) && *c > 0)
            .map(|(_, s, c)| (*s, *c))
    };
    let have: Vec<Option<(u64, u64)>> = ranges.iter().map(mine).collect();
    if let [Some(u), Some(g)] = have[..] {
        return Ok(Step {
            name: "subordinate ids",
            note: format!(
                "{} has uids {}:{} and gids {}:{} (unchanged)",
                user.name, u.0, u.1, g.0, g.1
            ),
            actions: vec![],
        });
    }
    // One start free in both files, so uids and gids line up.
    let taken: Vec<(u64, u64)> = ranges.iter().flatten().map(|(_, s, c)| (*s, *c)).collect();
    let start = first_free(&taken, SUB_ID_COUNT);
    let last = start + SUB_ID_COUNT - 1;
    let missing_uid = have[0].is_none();
    let missing_gid = have[1].is_none();
    let mut actions = Vec::new();
    if real_root && crate::sandbox::idmap::tool_on_path("usermod") {
        let mut argv = vec!["usermod".to_string()];
        if missing_uid {
            argv.extend(["--add-subuids".into(), format!("{start}-{last}")]);
        }
        if missing_gid {
            argv.extend(["--add-subgids".into(), format!("{start}-{last}")]);
        }
        argv.push(user.name.clone());
        actions.push(Action::Run(argv));
    } else {
        for (file, missing) in files.iter().zip([missing_uid, missing_gid]) {
            if missing {
                actions.push(Action::AppendSubId {
                    file: file.clone(),
                    line: format!("{}:{start}:{SUB_ID_COUNT}", user.name),
                });
            }
        }
    }
    Ok(Step {
        name: "subordinate ids",
        note: format!(
            "{} needs {} {start}-{last} (the first free 65536 ids at or above {SUB_ID_MIN})",
            user.name,
            match (missing_uid, missing_gid) {
                (true, true) => "uids and gids",
                (true, false) => "uids",
                _ => "gids",
            }
        ),
        actions,
    })
}

pub fn is_v2(cgroup_root: &Path) -> bool {
    cgroup_root.join("cgroup.controllers").is_file()
}

fn owned_by(path: &Path, user: &User) -> bool {
    fs::metadata(path).is_ok_and(|m| m.uid() == user.uid)
}

/// A chown of `dir` and everything in it unless it all belongs to the user.
fn chown_tree_action(dir: &Path, user: &User) -> Option<Action> {
    let all_owned = owned_by(dir, user)
        && fs::read_dir(dir)
            .map(|es| es.flatten().all(|e| owned_by(&e.path(), user)))
            .unwrap_or(true);
    (!all_owned || !dir.exists()).then(|| Action::Chown {
        path: dir.to_path_buf(),
        uid: user.uid,
        gid: user.gid,
        recursive: true,
    })
}

fn cgroups(root: &Path, parent: &Path, user: &User, real_root: bool) -> Result<Vec<Step>> {
    let cg_root = root.join("sys/fs/cgroup");
    let rel = parent.strip_prefix("/").unwrap_or(parent);
    if rel.as_os_str().is_empty() {
        bail!("--cgroup-parent must name a subtree, e.g. /compute-worker, not the root");
    }
    if !cg_root.is_dir() {
        return Ok(vec![Step {
            name: "cgroup",
            note: format!(
                "{} does not exist: no cgroups to delegate",
                cg_root.display()
            ),
            actions: vec![],
        }]);
    }
    if is_v2(&cg_root) {
        return Ok(vec![cgroup_v2(root, real_root)]);
    }
    let mounts = cgroup::v1_mounts_in(&cg_root);
    let mut actions = Vec::new();
    for m in &mounts {
        let dir = m.join(rel);
        if !dir.is_dir() {
            actions.push(Action::Mkdir(dir.clone()));
        }
        // cgroup v1 cpuset: a child has no cpus or mems until given them.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let src = m.join(f);
            if !src.is_file() {
                continue;
            }
            let empty = fs::read_to_string(dir.join(f)).map_or(true, |t| t.trim().is_empty());
            if empty {
                actions.push(Action::Copy {
                    from: src,
                    to: dir.join(f),
                });
            }
        }
        actions.extend(chown_tree_action(&dir, user));
    }
    for required in cgroup::V1_REQUIRED {
        let mounted = mounts.iter().any(|m| {
            m.file_name()
                .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == *required))
        });
        if !mounted {
            bail!(
                "the cgroup v1 `{required}` controller is not mounted under {}: mount it (or boot with cgroup v2) before delegating",
                cg_root.display()
            );
        }
    }
    Ok(vec![Step {
        name: "cgroup",
        note: format!(
            "cgroup v1: {} in {} hierarchies, owned by {}",
            parent.display(),
            mounts.len(),
            user.name
        ),
        actions,
    }])
}

/// cgroup v2: systemd delegates the controllers to user managers (and
/// through `Delegate=yes` to the worker's user service).
fn cgroup_v2(root: &Path, real_root: bool) -> Step {
    let path = root.join(DELEGATE_DROP_IN);
    let current = fs::read_to_string(&path).unwrap_or_default();
    let mut actions = Vec::new();
    if current != DELEGATE_TEXT {
        actions.push(Action::Write {
            path: path.clone(),
            text: DELEGATE_TEXT.to_string(),
        });
        if real_root && super::systemd_runs() {
            actions.push(Action::Run(vec![
                "systemctl".into(),
                "daemon-reload".into(),
            ]));
        }
    }
    Step {
        name: "cgroup",
        note: if actions.is_empty() {
            format!("cgroup v2: {} is in place (unchanged)", path.display())
        } else {
            format!(
                "cgroup v2: systemd must delegate controllers ({})",
                path.display()
            )
        },
        actions,
    }
}

fn linger(root: &Path, user: &User, real_root: bool) -> Step {
    let name = "linger";
    let file = root.join("var/lib/systemd/linger").join(&user.name);
    if file.exists() {
        return Step {
            name,
            note: format!("enabled for {} (unchanged)", user.name),
            actions: vec![],
        };
    }
    let command = vec!["loginctl".into(), "enable-linger".into(), user.name.clone()];
    let skip = |why: String| {
        Step {
        name,
        note: format!(
            "{why}: not enabled; where systemd runs, `loginctl enable-linger {}` keeps the worker's user service running without a login",
            user.name
        ),
        actions: vec![],
    }
    };
    if !real_root {
        return skip("--root given".into());
    }
    if !crate::sandbox::idmap::tool_on_path("loginctl") {
        return skip("loginctl is not installed".into());
    }
    if !super::systemd_runs() || !logind_runs() {
        return skip("systemd-logind is not running".into());
    }
    Step {
        name,
        note: format!("the user service of {} must outlive logins", user.name),
        actions: vec![Action::Run(command)],
    }
}

fn logind_runs() -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", "systemd-logind.service"])
        .status()
        .is_ok_and(|s| s.success())
}

fn cache(root: &Path, user: &User) -> Step {
    let (state, images) = cache_dirs(user);
    let home = under(root, &user.home);
    let mut actions = Vec::new();
    for dir in [state, images] {
        let dir = under(root, &dir);
        // Every directory from the home down must be the user's.
        let mut created = Vec::new();
        for a in dir.ancestors() {
            if a == home || !a.starts_with(&home) {
                break;
            }
            if !a.exists() {
                created.push(a.to_path_buf());
            }
        }
        if !dir.exists() {
            actions.push(Action::Mkdir(dir.clone()));
        }
        for p in created
            .iter()
            .rev()
            .chain((!created.contains(&dir)).then_some(&dir))
        {
            if !owned_by(p, user) {
                actions.push(Action::Chown {
                    path: p.clone(),
                    uid: user.uid,
                    gid: user.gid,
                    recursive: false,
                });
            }
        }
    }
    Step {
        name: "cache directories",
        note: if actions.is_empty() {
            format!(
                "state and image directories of {} exist (unchanged)",
                user.name
            )
        } else {
            format!("state and image directories owned by {}", user.name)
        },
        actions,
    }
}

pub fn apply(action: &Action) -> Result<()> {
    match action {
        Action::Run(argv) => {
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .with_context(|| format!("starting {}", argv[0]))?;
            if !out.status.success() {
                bail!(
                    "{} failed ({}): {}",
                    argv[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Action::AppendSubId { file, line } => append_locked(file, line)?,
        Action::Mkdir(p) => fs::create_dir_all(p)?,
        Action::Copy { from, to } => fs::write(to, fs::read(from)?)?,
        Action::Write { path, text } => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            replace_file(path, text.as_bytes(), 0o644)?;
        }
        Action::Chown {
            path,
            uid,
            gid,
            recursive,
        } => chown(path, *uid, *gid, *recursive)?,
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32, recursive: bool) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if recursive && fs::symlink_metadata(path)?.is_dir() {
        for e in fs::read_dir(path)? {
            chown(&e?.path(), uid, gid, true)?;
        }
    }
    Ok(())
}

/// Append `line` to `file` the way shadow's tools edit it: take
/// `FILE.lock` (created exclusively, so usermod and we never edit at the
/// same time), write a full copy next to it and rename it over the file.
fn append_locked(file: &Path, line: &str) -> Result<()> {
    let lock = PathBuf::from(format!("{}.lock", file.display()));
    let mut l = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&lock)
        .with_context(|| {
            format!(
                "{} is locked by another program (or a crashed one): retry, or remove {} if no usermod/useradd runs",
                file.display(),
                lock.display()
            )
        })?;
    let result = (|| {
        writeln!(l, "{}", std::process::id())?;
        let mut text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        let mode = fs::metadata(file).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        replace_file(file, text.as_bytes(), mode)
    })();
    let _ = fs::remove_file(&lock);
    result.with_context(|| format!("editing {}", file.display()))
}

/// Write `data` to a temporary file beside `path`, sync it, and rename it
/// over `path`: readers see the old file or the new one, never half.
pub(crate) fn replace_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.cw-new", path.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_free_range_skips_every_overlap() {
        assert_eq!(first_free(&[], 65536), 100_000);
        assert_eq!(first_free(&[(100_000, 65536)], 65536), 165_536);
        // A hole too small is skipped, one big enough is used.
        assert_eq!(
            first_free(&[(100_000, 1000), (120_000, 65536)], 65536),
            185_536
        );
        assert_eq!(
            first_free(&[(100_000, 65536), (300_000, 65536)], 65536),
            165_536
        );
        // Ranges below the minimum do not matter.
        assert_eq!(first_free(&[(10, 50_000)], 65536), 100_000);
        assert_eq!(first_free(&[(90_000, 20_000)], 65536), 110_000);
    }
}
