//! Per-run directories under `<state dir>/runs/`: the overlay upper and work
//! directories. Everything else of a run (the merged rootfs, the OCI bundle,
//! libcontainer's state) lives in the keeper's scratch tmpfs, mounted in the
//! keeper's own mount namespace on `<state dir>/scratch`, a directory every
//! run shares and none removes. A run holds an exclusive flock on its `lock`
//! file
//! for as long as any of its processes lives, so a directory whose lock can
//! be taken belongs to a crashed run and may be removed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rootfs_cache::lock::FileLock;

/// A file that marks a run directory kept on purpose (`keep_upper`).
pub const KEPT: &str = "kept";

/// Prefix of every run id (and of the run's cgroup name).
pub const RUN_PREFIX: &str = "cw-";

pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
    pub lock: File,
    /// Where the keeper mounts its scratch tmpfs.
    pub scratch: PathBuf,
}

fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

fn random_id() -> io::Result<String> {
    let mut buf = [0u8; 6];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{RUN_PREFIX}{hex}"))
}

/// Create `dir` and its missing parents with mode 0700 (an existing one
/// keeps its mode): the worker's state directory and `HOST_DIRECTORY` hold
/// files owned by the worker's user, image root's among them, that no other
/// account may reach (`doctor` warns about existing ones that others can).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Create `dir` (and its parents) with mode 0700, and take group and other
/// access away from it if it exists: a run's upper directory holds what the
/// program wrote, setuid files included, owned by the worker's user on the
/// host (image root), so no other account may reach it.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    create_private_dir(dir)?;
    let mode = fs::metadata(dir)?.mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

impl RunDir {
    /// Create a fresh run directory and take its lock. The directory is
    /// built under a temporary name and renamed once locked, so that a
    /// concurrent stale-run sweep never sees it unlocked.
    pub fn create(state_dir: &Path) -> io::Result<RunDir> {
        let runs = runs_dir(state_dir);
        private_dir(&runs)?;
        let scratch = state_dir.join("scratch");
        private_dir(&scratch)?;
        loop {
            let id = random_id()?;
            let path = runs.join(&id);
            let tmp = runs.join(format!(".new-{id}"));
            match fs::create_dir(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            // Nobody else knows the directory yet: the lock is free.
            let lock = FileLock::try_exclusive(&tmp.join("lock"))?
                .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?
                .into_file();
            for sub in ["upper", "work"] {
                fs::create_dir(tmp.join(sub))?;
            }
            fs::rename(&tmp, &path)?;
            return Ok(RunDir {
                id,
                path,
                lock,
                scratch,
            });
        }
    }

    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
}

/// Sub-directory layout shared by the caller and the helper: the upper and
/// work directories.
///
/// Every other directory of a run lives in the scratch tmpfs the keeper
/// mounts in its own mount namespace (see [`scratch_layout`]): on a disk
/// mounted with `discard`, creating and removing a directory costs a
/// synchronous discard of its block (milliseconds on a busy host), and
/// nothing of them needs to outlive the keeper. Its mount point is shared
/// and kept: removing a directory that is a mount point in another (still
/// live) mount namespace makes the kernel detach that mount then and there,
/// which cost the caller a millisecond at the end of every run.
pub fn layout(path: &Path) -> (PathBuf, PathBuf) {
    (path.join("upper"), path.join("work"))
}

/// The merged rootfs, the OCI bundle and libcontainer's state directory
/// in the scratch tmpfs mounted on `scratch`.
pub fn scratch_layout(scratch: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        scratch.join("merged"),
        scratch.join("bundle"),
        scratch.join("state"),
    )
}

/// Run directories whose lock is free: left behind by runs that crashed.
pub fn stale(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(runs_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with(RUN_PREFIX))
                && !p.join(KEPT).exists()
                && !is_locked(p)
        })
        .collect()
}

/// Ids of the runs that are alive (their lock is held).
pub fn is_live(state_dir: &Path, id: &str) -> bool {
    let p = runs_dir(state_dir).join(id);
    p.is_dir() && is_locked(&p)
}

/// No lock file (the run died while being created) is not locked.
fn is_locked(dir: &Path) -> bool {
    rootfs_cache::lock::is_locked(&dir.join("lock"))
}

/// Remove a run's overlay work directory and, unless `keep_upper`, its
/// upper layer. Returns what could not be removed (files of subordinate
/// ids in directories this user cannot write).
pub fn remove_layers(run: &Path, keep_upper: bool) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let (upper, work) = layout(run);
    // overlayfs makes its own `work/work` mode 000: open it up first
    // rather than fail a removal and walk the tree.
    let _ = fs::set_permissions(work.join("work"), fs::Permissions::from_mode(0o700));
    let mut dirs = vec![work];
    if !keep_upper {
        dirs.push(upper);
    }
    dirs.into_iter()
        .filter(|p| remove_tree(p).is_err() && p.exists())
        .collect()
}

/// Remove a directory tree, making its directories writable first when a
/// plain removal fails (overlayfs makes its `work/work` mode 000, and a
/// program may have removed the w bit of its own directories). As root of
/// a user namespace this removes anything; as the host user, what that user
/// owns.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}
