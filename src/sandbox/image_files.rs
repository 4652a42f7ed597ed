//! Files of an image read on the host: `/etc/passwd` and `/etc/group` as
//! the merged rootfs of a run's layers shows them.
//!
//! They are image content (hostile input): each is opened beneath its
//! layer directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! so no symlink is followed (in or out of the rootfs), must be a regular
//! file, and is read up to [`MAX_DB_BYTES`].

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use super::RunSpec;

/// Largest `/etc/passwd` or `/etc/group` read.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// A file of the image that could not be read safely.
#[derive(Debug)]
pub struct Unreadable {
    pub path: String,
    pub reason: String,
}

/// Give `run` a HOME when its environment has none (or an empty one): the
/// home directory of its uid in the image's /etc/passwd, else `/`, as
/// Docker does. Without it libcontainer's init would look it up itself
/// with glibc's `getpwuid`, after the pivot into the image: glibc then
/// loads NSS modules from the image's library directories, which would
/// run image code before the seccomp filter and the program's exec.
pub fn set_home(run: &mut RunSpec) {
    let set = |e: &String| e.starts_with("HOME=") && e.len() > "HOME=".len();
    if run.env.iter().any(set) {
        return;
    }
    let uid = run.uid.to_string();
    let home = match lookup(&run.layers, "etc/passwd", |f| f.len() >= 6 && f[2] == uid) {
        Ok(Some(f)) if f[5].starts_with('/') => f[5].clone(),
        _ => "/".to_string(),
    };
    run.env.retain(|e| !e.starts_with("HOME="));
    run.env.push(format!("HOME={home}"));
}

/// The first line of `rel` (colon-separated, at least 4 fields) for which
/// `pick` holds.
pub fn lookup(
    layers: &[PathBuf],
    rel: &str,
    pick: impl Fn(&[String]) -> bool,
) -> Result<Option<Vec<String>>, Unreadable> {
    let Some(text) = read_db(layers, rel)? else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .find(|f| pick(f)))
}

/// The text of `rel` as the merged rootfs shows it: from the top-most layer
/// that has it; `None` when no layer has it or a whiteout hides it.
pub fn read_db(layers: &[PathBuf], rel: &str) -> Result<Option<String>, Unreadable> {
    let unreadable = |reason: String| Unreadable {
        path: format!("/{rel}"),
        reason,
    };
    for layer in layers {
        let Some(file) = open_beneath(layer, rel).map_err(|e| unreadable(e.to_string()))? else {
            continue;
        };
        let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
        let ft = meta.file_type();
        if std::os::unix::fs::FileTypeExt::is_char_device(&ft) {
            // An overlay whiteout: deleted in this layer.
            return Ok(None);
        }
        if !ft.is_file() {
            return Err(unreadable("it is not a regular file".into()));
        }
        if meta.len() > MAX_DB_BYTES {
            return Err(unreadable(format!(
                "it is larger than {} MiB",
                MAX_DB_BYTES >> 20
            )));
        }
        let mut text = Vec::new();
        file.take(MAX_DB_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| unreadable(e.to_string()))?;
        if text.len() as u64 > MAX_DB_BYTES {
            return Err(unreadable(format!(
                "it is larger than {} MiB",
                MAX_DB_BYTES >> 20
            )));
        }
        return Ok(Some(String::from_utf8_lossy(&text).into_owned()));
    }
    Ok(None)
}

/// Open `rel` beneath `dir` without following any symlink; `None` when it
/// (or a directory on the way) does not exist in this layer.
fn open_beneath(dir: &Path, rel: &str) -> std::io::Result<Option<std::fs::File>> {
    let root = std::fs::File::open(dir)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    use std::os::fd::AsRawFd;
    match nix::fcntl::openat2(root.as_raw_fd(), rel, how) {
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(std::fs::File::from(unsafe {
            OwnedFd::from_raw_fd(fd)
        }))),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(Errno::ELOOP) => Err(std::io::Error::other(
            "it (or a directory on its path) is a symlink, which is not followed",
        )),
        Err(e) => Err(e.into()),
    }
}
