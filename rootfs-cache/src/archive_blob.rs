//! Reading the files of an archive given to `import` (an OCI image layout
//! or a `docker save` tree) without trusting it: every file must be a
//! regular file reached inside the archive without any symbolic link
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and every read
//! is bounded by the size its descriptor declares, which is checked too.
//! A blob that links to `/dev/zero` or a fifo is refused before a byte of
//! it is read.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Bound on JSON files of an archive that no descriptor sizes
/// (`index.json`, docker's `manifest.json` and image config).
pub(crate) const MAX_JSON_BYTES: u64 = 16 << 20;

fn import_err(archive: &Path, reason: String) -> Error {
    Error::Import {
        path: archive.to_path_buf(),
        reason,
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Check that `f` (opened as `what`) is a regular file; its size.
fn regular(f: &File, what: &str, archive: &Path) -> Result<u64> {
    let m = f
        .metadata()
        .map_err(|e| import_err(archive, format!("{what}: {e}")))?;
    if !m.file_type().is_file() {
        return Err(import_err(
            archive,
            format!(
                "{what} is {}; a blob must be a regular file inside the archive",
                kind_of(m.file_type())
            ),
        ));
    }
    Ok(m.len())
}

/// Open `rel` below the archive directory `root` as a regular file,
/// following no symbolic link on the way; the file and its size.
pub(crate) fn open_in(root: &Path, rel: &str, archive: &Path) -> Result<(File, u64)> {
    let dir =
        File::open(root).map_err(|e| import_err(archive, format!("{}: {e}", root.display())))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match openat2(dir.as_raw_fd(), rel, how) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => {
            return Err(import_err(
                archive,
                format!(
                    "{rel} is a symbolic link or is reached through one; \
                     a blob must be a regular file inside the archive"
                ),
            ))
        }
        Err(Errno::EXDEV) => {
            return Err(import_err(
                archive,
                format!("path {rel:?} leaves the archive"),
            ))
        }
        Err(e) => return Err(import_err(archive, format!("{rel}: {e}"))),
    };
    // SAFETY: `fd` was just returned by openat2 and is owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    let size = regular(&f, rel, archive)?;
    Ok((f, size))
}

/// Read all of `f` (`what`, `size` bytes by fstat), refusing more than
/// `max` bytes and, when `declared` is given, any other size.
fn read_bounded(
    f: File,
    size: u64,
    what: &str,
    declared: Option<u64>,
    max: u64,
    archive: &Path,
) -> Result<Vec<u8>> {
    let limit = declared.unwrap_or(max).min(max);
    if size > limit || declared.is_some_and(|d| d != size) {
        return Err(import_err(
            archive,
            match declared {
                Some(d) => format!("{what} holds {size} bytes but its descriptor declares {d}"),
                None => format!("{what} holds {size} bytes, more than the {max} allowed"),
            },
        ));
    }
    let mut v = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|e| import_err(archive, format!("{what}: {e}")))?;
    if v.len() as u64 != size {
        return Err(import_err(
            archive,
            format!("{what} changed size while it was read"),
        ));
    }
    Ok(v)
}

/// Read the file `rel` of the archive directory `root` (see [`open_in`]),
/// of `declared` bytes when a descriptor gives its size, and never more
/// than `max` bytes.
pub(crate) fn read_in(
    root: &Path,
    rel: &str,
    archive: &Path,
    declared: Option<u64>,
    max: u64,
) -> Result<Vec<u8>> {
    let (f, size) = open_in(root, rel, archive)?;
    read_bounded(f, size, rel, declared, max, archive)
}

/// Open a blob that an import found at `path` (already checked by
/// [`open_in`]) again to read it: still a regular file (the last component
/// is not followed), of the size `desc` declares, and read no further.
pub(crate) fn open_local(path: &Path, desc: &Descriptor) -> Result<std::io::Take<File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| import_err(path, format!("blob {}: {e}", desc.digest)))?;
    let size = regular(&f, &format!("blob {}", desc.digest), path)?;
    if size != desc.size {
        return Err(import_err(
            path,
            format!(
                "blob {} holds {size} bytes but its descriptor declares {}",
                desc.digest, desc.size
            ),
        ));
    }
    Ok(f.take(desc.size))
}
