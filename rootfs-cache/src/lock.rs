//! flock(2) locks on files (via fs4), the one lock helper of the workspace:
//! the image store, the worker's bundle cache and the sandbox's run
//! directories all use it.
//!
//! Locks belong to an open file description, so they work between threads
//! of one process as well as between processes, and the kernel drops them
//! when the last process holding the file dies (a lock handed to a child
//! process lives as long as the child). Blocking calls are retried when a
//! signal interrupts them.
//!
//! A directory that deletes lock files while holding them (to clean up)
//! must lock with [`FileLock::exclusive_current`] or check
//! [`FileLock::is_current`]: someone who opened the file before it was
//! deleted may otherwise hold a lock on a file nobody else can find.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use crate::error::{Error, Result};

/// A held lock on a file; released when dropped (or, when the file was
/// handed to another process, when that one closes it too).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

#[derive(Clone, Copy)]
enum Mode {
    Shared,
    Exclusive,
}

/// Where taking a lock failed.
enum Step {
    Open,
    Lock,
}

/// Open (creating, never truncating) the lock file `path`.
fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// flock `file`, waiting or not; `false` when not waiting and someone else
/// holds a lock that conflicts.
fn flock(file: &File, mode: Mode, wait: bool) -> io::Result<bool> {
    loop {
        let r = match (mode, wait) {
            (Mode::Shared, true) => FileExt::lock_shared(file).map(|()| true),
            (Mode::Exclusive, true) => FileExt::lock_exclusive(file).map(|()| true),
            (Mode::Shared, false) => FileExt::try_lock_shared(file),
            (Mode::Exclusive, false) => FileExt::try_lock_exclusive(file),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Open and lock `path`; `None` when not waiting and the lock is taken.
fn take(
    path: &Path,
    mode: Mode,
    wait: bool,
) -> std::result::Result<Option<FileLock>, (Step, io::Error)> {
    let file = open(path).map_err(|e| (Step::Open, e))?;
    if !flock(&file, mode, wait).map_err(|e| (Step::Lock, e))? {
        return Ok(None);
    }
    Ok(Some(FileLock {
        file,
        path: path.to_path_buf(),
    }))
}

/// A blocking [`take`]: it always ends with the lock.
fn take_waiting(path: &Path, mode: Mode) -> std::result::Result<FileLock, (Step, io::Error)> {
    take(path, mode, true)?.ok_or_else(|| (Step::Lock, io::ErrorKind::WouldBlock.into()))
}

impl FileLock {
    /// Block until an exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        take_waiting(path, Mode::Exclusive).map_err(|(_, e)| e)
    }

    /// Block until a shared lock on `path` (created if missing) is held.
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        take_waiting(path, Mode::Shared).map_err(|(_, e)| e)
    }

    /// An exclusive lock on `path` (created if missing) if nobody holds
    /// any lock on it, else `None`.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        take(path, Mode::Exclusive, false).map_err(|(_, e)| e)
    }

    /// [`FileLock::exclusive`] on a lock file that others delete while
    /// holding it: locks again until the file locked is still at `path`.
    pub fn exclusive_current(path: &Path) -> io::Result<FileLock> {
        loop {
            let l = Self::exclusive(path)?;
            if l.is_current()? {
                return Ok(l);
            }
        }
    }

    /// [`FileLock::try_exclusive`] on a lock file that others delete while
    /// holding it (see [`FileLock::exclusive_current`]).
    pub fn try_exclusive_current(path: &Path) -> io::Result<Option<FileLock>> {
        loop {
            match Self::try_exclusive(path)? {
                None => return Ok(None),
                Some(l) if l.is_current()? => return Ok(Some(l)),
                Some(_) => {}
            }
        }
    }

    /// Turn the lock held into a shared one. Not atomic (flock(2)): another
    /// process may take the file exclusively in between, so check what the
    /// lock guards afterwards (e.g. [`FileLock::is_current`]).
    pub fn to_shared(&self) -> io::Result<()> {
        flock(&self.file, Mode::Shared, true).map(drop)
    }

    /// Turn the lock held into an exclusive one, waiting for other holders
    /// to go. Not atomic either (see [`FileLock::to_shared`]).
    pub fn to_exclusive(&self) -> io::Result<()> {
        flock(&self.file, Mode::Exclusive, true).map(drop)
    }

    /// Whether `path` still names the file locked (nobody deleted or
    /// replaced it since it was opened).
    pub fn is_current(&self) -> io::Result<bool> {
        let held = self.file.metadata()?;
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(m.ino() == held.ino() && m.dev() == held.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The open lock file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, still locked: the lock lasts as long as it (or a
    /// copy of it in another process) stays open.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Whether someone holds an exclusive lock on `path` (a shared one cannot
/// be had without waiting). A missing or unreadable file is not locked; the
/// file is never created.
pub fn is_locked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    !matches!(flock(&f, Mode::Shared, false), Ok(true))
}

// ------------------------------------------------------- the store's own

/// The store's errors, naming the lock file and the step that failed.
fn store_err(path: &Path) -> impl Fn((Step, io::Error)) -> Error + '_ {
    move |(step, e)| match step {
        Step::Open => Error::io(format!("opening lock file {}", path.display()), e),
        Step::Lock => Error::io(format!("locking {}", path.display()), e),
    }
}

/// [`FileLock::exclusive`], with the store's errors.
pub(crate) fn exclusive(path: &Path) -> Result<FileLock> {
    take_waiting(path, Mode::Exclusive).map_err(store_err(path))
}

/// [`FileLock::shared`], with the store's errors.
pub(crate) fn shared(path: &Path) -> Result<FileLock> {
    take_waiting(path, Mode::Shared).map_err(store_err(path))
}

/// [`FileLock::try_exclusive`], with the store's errors.
pub(crate) fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
    take(path, Mode::Exclusive, false).map_err(store_err(path))
}

/// Run a blocking lock acquisition off the async runtime.
pub(crate) async fn exclusive_async(path: PathBuf) -> Result<FileLock> {
    tokio::task::spawn_blocking(move || exclusive(&path))
        .await
        .map_err(|e| crate::error::Error::io("lock task", std::io::Error::other(e)))?
}

/// Run a blocking lock acquisition off the async runtime.
pub(crate) async fn shared_async(path: PathBuf) -> Result<FileLock> {
    tokio::task::spawn_blocking(move || shared(&path))
        .await
        .map_err(|e| crate::error::Error::io("lock task", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_share_and_exclusive_ones_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        assert!(!is_locked(&p));
        assert!(!p.exists(), "looking does not create the file");
        let a = FileLock::shared(&p).unwrap();
        let b = FileLock::shared(&p).unwrap();
        assert!(!is_locked(&p), "shared locks are not exclusive ones");
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(b);
        assert!(!is_locked(&p));
        let x = FileLock::try_exclusive(&p).unwrap().unwrap();
        assert!(is_locked(&p));
        assert_eq!(x.path(), p);
        // The kernel keeps the lock with the open file, wherever it goes.
        let f = x.into_file();
        assert!(is_locked(&p));
        drop(f);
        assert!(!is_locked(&p));
    }

    #[test]
    fn a_lock_changes_kind_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let l = FileLock::exclusive(&p).unwrap();
        l.to_shared().unwrap();
        let other = FileLock::shared(&p).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(other);
        l.to_exclusive().unwrap();
        let t = std::thread::spawn({
            let p = p.clone();
            move || FileLock::shared(&p).map(drop)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "a shared lock waits for the exclusive one"
        );
        drop(l);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_deleted_lock_file_is_not_current_and_is_locked_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let gone = FileLock::exclusive(&p).unwrap();
        assert!(gone.is_current().unwrap());
        std::fs::remove_file(&p).unwrap();
        assert!(!gone.is_current().unwrap());
        // A new file at the path: a fresh lock, while the old one is held.
        let l = FileLock::try_exclusive_current(&p).unwrap().unwrap();
        assert!(l.is_current().unwrap());
        assert!(FileLock::try_exclusive_current(&p).unwrap().is_none());
        drop(l);
        assert!(FileLock::exclusive_current(&p)
            .unwrap()
            .is_current()
            .unwrap());
    }

    #[test]
    fn store_errors_name_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/x.lock");
        let e = exclusive(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("opening lock file {}", p.display())),
            "{e}"
        );
        let e = FileLock::exclusive(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
