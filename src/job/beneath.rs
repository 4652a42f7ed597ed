//! Opening files in directories that programs could change (`output/`,
//! `shared/`, bundles) without following links and without leaving the
//! directory: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or,
//! on kernels without it, `O_NOFOLLOW` at every step from the directory.
//!
//! Every open also takes `O_NONBLOCK` (a FIFO left as `scores.json` must
//! not hang the worker) and the caller gets only regular files.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Why a file under a program-writable directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("`{0}` is a symbolic link or lies behind one; the worker does not follow links that programs leave")]
    Link(String),
    #[error("`{0}` is not a regular file")]
    NotRegular(String),
    #[error("`{path}` is larger than {max} bytes, the limit {setting}; raise it or make the file smaller")]
    TooLarge {
        path: String,
        max: u64,
        setting: &'static str,
    },
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound on a file's size and the setting that sets it (for messages).
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub bytes: u64,
    pub setting: &'static str,
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and nothing else
    // owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Open `rel` under `dir` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC |
/// O_NONBLOCK`), never through a symlink and never outside `dir`.
/// `Ok(None)` when it does not exist.
pub fn open(
    dir: &Path,
    rel: &Path,
    flags: OFlag,
    mode: Mode,
) -> Result<Option<File>, BeneathError> {
    let shown = || dir.join(rel).display().to_string();
    let names: Vec<_> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(BeneathError::Link(shown())),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, parents)) = names.split_last() else {
        return Err(BeneathError::NotRegular(shown()));
    };
    let dirfd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(own)
    .map_err(|e| io_err(dir.display().to_string(), e))?;
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let how = OpenHow::new()
        .flags(flags)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let opened = match nix::fcntl::openat2(dirfd.as_raw_fd(), rel, how) {
        // No openat2 (before 5.6, or a seccomp filter): one step at a time.
        Err(Errno::ENOSYS) | Err(Errno::EPERM) => {
            let mut cur = dirfd;
            let mut res = Ok(0);
            for name in parents {
                match nix::fcntl::openat(
                    Some(cur.as_raw_fd()),
                    *name,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => cur = own(fd),
                    // A symlink in the middle: ENOTDIR with O_DIRECTORY.
                    Err(Errno::ENOTDIR) => {
                        res = Err(Errno::ELOOP);
                        break;
                    }
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            res.and_then(|_| nix::fcntl::openat(Some(cur.as_raw_fd()), *last, flags, mode))
        }
        r => r,
    };
    let file = match opened {
        Ok(fd) => File::from(own(fd)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) | Err(Errno::EXDEV) => return Err(BeneathError::Link(shown())),
        Err(e) => return Err(io_err(shown(), e)),
    };
    let meta = file.metadata().map_err(|source| BeneathError::Io {
        path: shown(),
        source,
    })?;
    if !meta.is_file() {
        return Err(BeneathError::NotRegular(shown()));
    }
    Ok(Some(file))
}

fn io_err(path: String, e: Errno) -> BeneathError {
    BeneathError::Io {
        path,
        source: std::io::Error::from(e),
    }
}

/// Open a regular file `rel` under `dir` for reading.
pub fn open_read(dir: &Path, rel: &Path) -> Result<Option<File>, BeneathError> {
    open(dir, rel, OFlag::O_RDONLY, Mode::empty())
}

/// Read the regular file `rel` under `dir`, at most `cap.bytes` of it
/// (a longer file is refused, not cut). `Ok(None)` when it does not exist.
pub fn read(dir: &Path, rel: &Path, cap: Cap) -> Result<Option<Vec<u8>>, BeneathError> {
    let Some(file) = open_read(dir, rel)? else {
        return Ok(None);
    };
    let shown = || dir.join(rel).display().to_string();
    let too_large = || BeneathError::TooLarge {
        path: shown(),
        max: cap.bytes,
        setting: cap.setting,
    };
    let len = file
        .metadata()
        .map_err(|source| BeneathError::Io {
            path: shown(),
            source,
        })?
        .len();
    if len > cap.bytes {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(len as usize);
    // One byte more than the cap tells a file that grew past it.
    file.take(cap.bytes + 1)
        .read_to_end(&mut data)
        .map_err(|source| BeneathError::Io {
            path: shown(),
            source,
        })?;
    if data.len() as u64 > cap.bytes {
        return Err(too_large());
    }
    Ok(Some(data))
}

/// Create `rel` under `dir`; fails if anything (a dangling link too) is
/// already there.
pub fn create_new(dir: &Path, rel: &Path) -> Result<File, BeneathError> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
    match open(dir, rel, flags, Mode::from_bits_truncate(0o644))? {
        Some(f) => Ok(f),
        None => Err(io_err(dir.join(rel).display().to_string(), Errno::ENOENT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Cap = Cap {
        bytes: 10,
        setting: "TEST_CAP",
    };

    #[test]
    fn links_fifos_and_large_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("out");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(t.path().join("secret"), "pw").unwrap();
        std::fs::write(d.join("sub/ok"), "fine").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), d.join("abs")).unwrap();
        std::os::unix::fs::symlink("../secret", d.join("rel")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(d.join("big"), "01234567890").unwrap();
        let r = |p: &str| read(&d, Path::new(p), CAP);
        assert_eq!(r("sub/ok").unwrap().unwrap(), b"fine");
        assert!(r("missing").unwrap().is_none());
        for p in ["abs", "rel", "dirlink/ok", "../secret"] {
            assert!(matches!(r(p), Err(BeneathError::Link(_))), "{p}");
        }
        assert!(matches!(r("fifo"), Err(BeneathError::NotRegular(_))));
        let e = r("big").unwrap_err().to_string();
        assert!(e.contains("TEST_CAP"), "{e}");

        std::os::unix::fs::symlink(t.path().join("made"), d.join("dangling")).unwrap();
        assert!(create_new(&d, Path::new("dangling")).is_err());
        assert!(!t.path().join("made").exists());
        create_new(&d, Path::new("new")).unwrap();
    }
}
