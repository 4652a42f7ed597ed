//! flock(2)-based locks (via fs4). Locks belong to an open file description,
//! so they work between threads of one process as well as between processes,
//! and the kernel drops them when a process dies.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use crate::error::{IoContext, Result};

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    file: File,
    path: PathBuf,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

impl Lock {
    /// Block until an exclusive lock on `path` is held.
    pub(crate) fn exclusive(path: &Path) -> Result<Lock> {
        let file = open(path)?;
        FileExt::lock_exclusive(&file).ctx(|| format!("locking {}", path.display()))?;
        Ok(Lock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Block until a shared lock on `path` is held.
    pub(crate) fn shared(path: &Path) -> Result<Lock> {
        let file = open(path)?;
        FileExt::lock_shared(&file).ctx(|| format!("locking {}", path.display()))?;
        Ok(Lock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// An exclusive lock if nobody holds any lock on `path`.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let file = open(path)?;
        if FileExt::try_lock_exclusive(&file).ctx(|| format!("locking {}", path.display()))? {
            Ok(Some(Lock {
                file,
                path: path.to_path_buf(),
            }))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Run a blocking lock acquisition off the async runtime.
pub(crate) async fn exclusive_async(path: PathBuf) -> Result<Lock> {
    tokio::task::spawn_blocking(move || Lock::exclusive(&path))
        .await
        .map_err(|e| crate::error::Error::io("lock task", std::io::Error::other(e)))?
}

/// Run a blocking lock acquisition off the async runtime.
pub(crate) async fn shared_async(path: PathBuf) -> Result<Lock> {
    tokio::task::spawn_blocking(move || Lock::shared(&path))
        .await
        .map_err(|e| crate::error::Error::io("lock task", std::io::Error::other(e)))?
}
