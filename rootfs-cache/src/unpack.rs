//! Safe unpacking of one image layer into a directory in overlayfs form.
//!
//! This is a plain blocking function with no global state so that it can run
//! in another process (for example inside a user-namespace helper, where
//! `lchown` to the image's uids works).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::bounds::{copy_sparse, UnpackBounds};
use crate::error::{Error, Result};

mod inflate;

use inflate::CHUNK;
pub use inflate::{detect_compression, Compression};

/// What to do about file owners recorded in the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Ownership {
    /// `lchown` every entry to its recorded uid/gid; fail if that is not permitted.
    Required,
    /// Try `lchown`; when not permitted, keep the caller's ids and count the failures
    /// in [`UnpackReport::chown_failures`] (one warning per layer).
    #[default]
    BestEffort,
    /// Do not change owners.
    Skip,
}

/// Options of [`unpack_layer`] (serialisable, to hand to a helper process).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackOptions {
    /// Name of the image, for error messages.
    pub image: String,
    /// Layer digest (or other name), for error messages.
    pub layer: String,
    /// When set, the uncompressed tar stream must hash to this `sha256:` digest
    /// (the config's `rootfs.diff_ids` entry).
    pub expected_diff_id: Option<String>,
    /// File owner policy.
    pub ownership: Ownership,
    /// Bounds on the bytes and entries the layer may unpack to; the layer
    /// stops with [`Error::UnsafeEntry`] at the first entry past either.
    #[serde(default)]
    pub bounds: UnpackBounds,
}

/// Counts of what [`unpack_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackReport {
    /// sha256 of the uncompressed tar stream (`sha256:<hex>`).
    pub diff_id: String,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// Whiteouts converted to 0:0 character devices.
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque_dirs: u64,
    /// Character/block device entries skipped.
    pub skipped_devices: u64,
    /// Total size of regular files, bytes.
    pub bytes: u64,
    /// Entries whose owner could not be set (with [`Ownership::BestEffort`]).
    pub chown_failures: u64,
    /// Entries unpacked (inodes and links), counted against
    /// [`UnpackBounds::max_entries`].
    #[serde(default)]
    pub entries: u64,
}

/// Whether `media_type` names a layer this crate can unpack (tar, tar+gzip,
/// tar+zstd in their OCI and Docker spellings). An empty media type is accepted
/// (archives without one); compression is always detected from the content.
pub fn is_supported_layer_media_type(media_type: &str) -> bool {
    media_type.is_empty()
        || (!media_type.contains("encrypted")
            && (media_type.starts_with("application/vnd.oci.image.layer.")
                || media_type.starts_with("application/vnd.docker.image.rootfs.")))
}

/// True when this process is root in the initial user namespace (so
/// `trusted.*` xattrs may be set).
fn is_real_root() -> bool {
    nix::unistd::geteuid().is_root()
        && fs::read_to_string("/proc/self/uid_map")
            .map(|m| {
                let f: Vec<&str> = m.split_whitespace().collect();
                f == ["0", "0", "4294967295"]
            })
            .unwrap_or(false)
}

/// The umask, from `/proc/self/status` (read, not changed: it is process-wide).
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

struct Ctx<'a> {
    dest: &'a Path,
    opts: &'a UnpackOptions,
    report: UnpackReport,
    real_root: bool,
    /// This process's umask, when known: a file created with the mode the
    /// layer wants needs no chmod when the umask takes nothing from it.
    umask: Option<u32>,
    /// Directories whose mode and times are applied at the end (so that a
    /// read-only directory can still be filled, and its mtime is not bumped).
    deferred_dirs: Vec<(PathBuf, u32, Option<filetime::FileTime>)>,
    chown_warned: bool,
    /// Directories below `dest` that this unpack created or checked, with
    /// every ancestor a real directory too (never a symlink). Only this
    /// unpack writes in `dest`, and [`Ctx::clear`] forgets a directory and
    /// everything below it when it removes it, so a path found here needs
    /// no more lookups.
    known_dirs: HashSet<PathBuf>,
    /// Copy buffer for file contents.
    buf: Vec<u8>,
}

/// Run `create`; when something is already at `p`, remove it (never
/// following a symlink) and run `create` once more.
macro_rules! create_replacing {
    ($ctx:expr, $entry:expr, $p:expr, $create:expr) => {
        match $create {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                $ctx.clear($entry, $p, false)?;
                $create
            }
            r => r,
        }
    };
}

impl Ctx<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            image: self.opts.image.clone(),
            layer: self.opts.layer.clone(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, entry: &str, what: &str, e: io::Error) -> Error {
        Error::Unpack {
            image: self.opts.image.clone(),
            layer: self.opts.layer.clone(),
            entry: entry.to_string(),
            source: crate::error::Doing::wrap(what, e),
        }
    }

    /// Split an entry path into safe components, refusing absolute paths and `..`.
    fn components(&self, entry: &str, raw: &[u8]) -> Result<Vec<OsString>> {
        if raw.contains(&0) {
            return Err(self.unsafe_entry(entry, "path contains a NUL byte"));
        }
        let p = Path::new(OsStr::from_bytes(raw));
        let mut out = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n.to_os_string()),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(
                        self.unsafe_entry(entry, "absolute paths are not allowed in a layer")
                    )
                }
                Component::ParentDir => {
                    return Err(self.unsafe_entry(entry, "\"..\" would leave the layer directory"))
                }
            }
        }
        Ok(out)
    }

    /// Walk `comps` below `dest`, refusing any existing symlink on the way and
    /// creating missing directories when `create` is set. Returns the full path.
    fn walk_dirs(&mut self, entry: &str, comps: &[OsString], create: bool) -> Result<PathBuf> {
        let mut p = self.dest.to_path_buf();
        p.extend(comps);
        if comps.is_empty() || self.known_dirs.contains(&p) {
            return Ok(p);
        }
        let mut p = self.dest.to_path_buf();
        for c in comps {
            p.push(c);
            if self.known_dirs.contains(&p) {
                continue;
            }
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        entry,
                        format!(
                            "its parent {:?} is a symlink; writing through symlinks is refused",
                            p.strip_prefix(self.dest).unwrap_or(&p)
                        ),
                    ))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.unsafe_entry(
                        entry,
                        format!(
                            "its parent {:?} is not a directory",
                            p.strip_prefix(self.dest).unwrap_or(&p)
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(|e| self.io_err(entry, "creating parent directory", e))?;
                }
                Err(e) => return Err(self.io_err(entry, "looking up parent", e)),
            }
            self.known_dirs.insert(p.clone());
        }
        Ok(p)
    }

    /// Remove whatever is at `p` (never following a symlink).
    fn clear(&mut self, entry: &str, p: &Path, keep_dir: bool) -> Result<bool> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                self.known_dirs.retain(|d| !d.starts_with(p));
                fs::remove_dir_all(p).map_err(|e| self.io_err(entry, "replacing directory", e))?;
            }
            Ok(_) => fs::remove_file(p).map_err(|e| self.io_err(entry, "replacing file", e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err(entry, "looking up", e)),
        }
        Ok(false)
    }

    fn chown(&mut self, entry: &str, p: &Path, uid: u64, gid: u64) -> Result<()> {
        self.chown_with(entry, uid, gid, |uid, gid| {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        })
    }

    /// Set the owner with `set` (`lchown` on a path, or `fchown` on an open file).
    fn chown_with(
        &mut self,
        entry: &str,
        uid: u64,
        gid: u64,
        set: impl FnOnce(u32, u32) -> io::Result<()>,
    ) -> Result<()> {
        if self.opts.ownership == Ownership::Skip {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(self.unsafe_entry(entry, "uid/gid out of range"));
        };
        if let Err(e) = set(uid, gid) {
            if self.opts.ownership == Ownership::Required {
                return Err(self.io_err(
                    entry,
                    &format!("setting owner {uid}:{gid} (run as root, or inside a user namespace that maps these ids)"),
                    e,
                ));
            }
            self.report.chown_failures += 1;
            if !self.chown_warned {
                self.chown_warned = true;
                tracing::warn!(image = %self.opts.image, layer = %self.opts.layer,
                    "cannot preserve file owners ({e}); files will belong to the current user");
            }
        }
        Ok(())
    }

    fn xattrs(&self, p: &Path, xattrs: &[(String, Vec<u8>)]) {
        for (k, v) in xattrs {
            // An image must not forge overlayfs metadata (opaque, redirect, ...).
            if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") {
                continue;
            }
            if let Err(e) = xattr::set(p, k, v) {
                tracing::debug!(path = %p.display(), xattr = %k, "xattr not set: {e}");
            }
        }
    }

    fn mark_opaque(&mut self, entry: &str, dir: &Path) -> Result<()> {
        let user = xattr::set(dir, "user.overlay.opaque", b"y");
        let trusted = if self.real_root {
            xattr::set(dir, "trusted.overlay.opaque", b"y").is_ok()
        } else {
            false
        };
        if let Err(e) = user {
            if !trusted {
                return Err(self.io_err(
                    entry,
                    "setting xattr user.overlay.opaque=y (the store's file system must support user xattrs)",
                    e,
                ));
            }
        }
        self.report.opaque_dirs += 1;
        Ok(())
    }

    fn whiteout(&mut self, entry: &str, p: &Path) -> Result<()> {
        self.clear(entry, p, false)?;
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(|e| {
            self.io_err(
                entry,
                "creating the overlay whiteout (a 0:0 character device; needs root or Linux >= 5.8 in a user namespace)",
                io::Error::from(e),
            )
        })?;
        self.report.whiteouts += 1;
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = e.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = self.components(&name, &raw)?;
        self.report.entries += 1;
        let size = if matches!(
            kind,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        ) {
            e.size()
        } else {
            0
        };
        // Checked before anything is written: a declared size past the
        // bound stops the layer before its first byte.
        if let Some(why) = self
            .opts
            .bounds
            .exceeded(self.report.bytes.saturating_add(size), self.report.entries)
        {
            return Err(self.unsafe_entry(&name, why));
        }

        // Metadata from the header, overridden by PAX records.
        let h = e.header();
        let mut uid = h.uid().unwrap_or(0);
        let mut gid = h.gid().unwrap_or(0);
        // No setuid or setgid file leaves a layer: image root is the
        // worker's user on the host, so such a file would be a setuid-worker
        // program for every local account (and no_new_privs makes the bits
        // useless in the sandbox). A directory's setgid only sets group
        // inheritance: it stays.
        let mode = match kind {
            tar::EntryType::Directory => h.mode().unwrap_or(0o755) & 0o7777,
            _ => h.mode().unwrap_or(0o644) & 0o1777,
        };
        let mut mtime = h
            .mtime()
            .ok()
            .map(|t| filetime::FileTime::from_unix_time(t as i64, 0));
        let mut xattrs = Vec::new();
        if let Ok(Some(pax)) = e.pax_extensions() {
            for ext in pax.flatten() {
                let (Ok(k), v) = (ext.key(), ext.value_bytes()) else {
                    continue;
                };
                let vs = std::str::from_utf8(v).unwrap_or("");
                match k {
                    "uid" => uid = vs.parse().unwrap_or(uid),
                    "gid" => gid = vs.parse().unwrap_or(gid),
                    "mtime" => {
                        if let Some(s) = vs.split('.').next().and_then(|s| s.parse::<i64>().ok()) {
                            mtime = Some(filetime::FileTime::from_unix_time(s, 0));
                        }
                    }
                    _ => {
                        if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((x.to_string(), v.to_vec()));
                        }
                    }
                }
            }
        }

        let Some((base, parents)) = comps.split_last() else {
            // The layer root itself ("./"). Its owner stays the worker
            // (image root) and it stays writable by it: the store renames
            // it into `l/`, which a directory of another owner, or without
            // the owner's write bit, forbids. Nothing sees it: the merged
            // root of an overlay takes the run's upper directory's owner
            // and mode.
            let _ = (uid, gid);
            self.deferred_dirs
                .push((self.dest.to_path_buf(), mode | 0o700, mtime));
            return Ok(());
        };
        let parent = self.walk_dirs(&name, parents, true)?;
        let base_bytes = base.as_bytes();

        // Whiteouts.
        if base_bytes == b".wh..wh..opq" {
            return self.mark_opaque(&name, &parent);
        }
        if let Some(hidden) = base_bytes.strip_prefix(b".wh.") {
            if hidden.starts_with(b".wh.") {
                // Other AUFS metadata (.wh..wh.plnk, ...): not part of the rootfs.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(self.unsafe_entry(&name, "malformed whiteout"));
            }
            return self.whiteout(&name, &parent.join(OsStr::from_bytes(hidden)));
        }

        let target = parent.join(base);
        match kind {
            tar::EntryType::Directory => {
                let mkdir = |p: &Path| fs::DirBuilder::new().mode(0o700).create(p);
                match mkdir(&target) {
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        if !self.clear(&name, &target, true)? {
                            mkdir(&target)
                                .map_err(|err| self.io_err(&name, "creating directory", err))?;
                        }
                    }
                    r => r.map_err(|err| self.io_err(&name, "creating directory", err))?,
                }
                self.known_dirs.insert(target.clone());
                self.chown(&name, &target, uid, gid)?;
                self.xattrs(&target, &xattrs);
                self.deferred_dirs.push((target, mode, mtime));
                self.report.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // Created with its final permission bits when the umask
                // leaves them alone and there is no setuid, setgid or
                // sticky bit (chown would clear those: they are set after).
                let exact = mode & !0o777 == 0 && self.umask.is_some_and(|u| mode & u == 0);
                let create_mode = if exact { mode } else { 0o600 };
                let open = |p: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(create_mode)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(p)
                };
                let mut f = create_replacing!(self, &name, &target, open(&target))
                    .map_err(|err| self.io_err(&name, "creating file", err))?;
                let n = copy_sparse(&mut e, &mut f, &mut self.buf)
                    .map_err(|err| self.io_err(&name, "writing file", err))?;
                self.report.files += 1;
                self.report.bytes += n;
                // Through the open file: no path lookups, and no window in
                // which the path could name something else.
                self.chown_with(&name, uid, gid, |uid, gid| {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                })?;
                if !exact {
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(|err| self.io_err(&name, "setting mode", err))?;
                }
                if !xattrs.is_empty() {
                    self.xattrs(&target, &xattrs);
                }
                if let Some(t) = mtime {
                    let _ = filetime::set_file_handle_times(&f, Some(t), Some(t));
                }
            }
            tar::EntryType::Symlink => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "symlink without a target"))?
                    .into_owned();
                let link = OsStr::from_bytes(&link);
                create_replacing!(
                    self,
                    &name,
                    &target,
                    std::os::unix::fs::symlink(link, &target)
                )
                .map_err(|err| self.io_err(&name, "creating symlink", err))?;
                self.chown(&name, &target, uid, gid)?;
                self.xattrs(&target, &xattrs);
                if let Some(t) = mtime {
                    let _ = filetime::set_symlink_file_times(&target, t, t);
                }
                self.report.symlinks += 1;
            }
            tar::EntryType::Link => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "hard link without a target"))?
                    .into_owned();
                let lcomps = self.components(&name, &link).map_err(|_| {
                    self.unsafe_entry(
                        &name,
                        format!(
                            "hard link target {:?} is outside the layer",
                            String::from_utf8_lossy(&link)
                        ),
                    )
                })?;
                let Some((lbase, lparents)) = lcomps.split_last() else {
                    return Err(self.unsafe_entry(&name, "hard link to the layer root"));
                };
                let src = self.walk_dirs(&name, lparents, false)?.join(lbase);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.unsafe_entry(&name, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(err) => {
                        return Err(self.io_err(
                            &name,
                            "hard link target missing in this layer",
                            err,
                        ))
                    }
                }
                if src != target {
                    // linkat(2) without AT_SYMLINK_FOLLOW: links a symlink itself, never its target.
                    create_replacing!(self, &name, &target, fs::hard_link(&src, &target))
                        .map_err(|err| self.io_err(&name, "creating hard link", err))?;
                }
                self.report.hardlinks += 1;
            }
            tar::EntryType::Fifo => {
                let mkfifo = |p: &Path| {
                    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .map_err(io::Error::from)
                };
                create_replacing!(self, &name, &target, mkfifo(&target))
                    .map_err(|err| self.io_err(&name, "creating fifo", err))?;
                self.chown(&name, &target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|err| self.io_err(&name, "setting mode", err))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                self.report.skipped_devices += 1;
            }
            other => {
                tracing::debug!(entry = %name, "skipping tar entry of type {other:?}");
            }
        }
        Ok(())
    }
}

/// Unpack the layer `blob` (tar, tar+gzip or tar+zstd; detected from the
/// content) into the directory `dest` (created if missing), converting
/// whiteouts to overlayfs form. See [`unpack_layer_from`].
pub fn unpack_layer(
    blob: &Path,
    media_type: &str,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    let f = File::open(blob).map_err(|e| Error::Unpack {
        image: opts.image.clone(),
        layer: opts.layer.clone(),
        entry: String::new(),
        source: crate::error::Doing::wrap(format!("opening {}", blob.display()), e),
    })?;
    unpack_layer_from(f, media_type, dest, opts)
}

/// Unpack a layer read from `input` (a file, or a pipe fed while the layer
/// downloads) into the directory `dest` (created if missing), converting
/// whiteouts to overlayfs form.
///
/// Two threads: one reads, decompresses and hashes (the diff id), the
/// calling one creates the files, so that inflating and file creation use
/// two cores.
///
/// Refuses (with [`Error::UnsafeEntry`], naming the image and the entry)
/// absolute paths, `..`, paths through symlinks, and hard links leaving the
/// layer. Owners are preserved per [`UnpackOptions::ownership`]; modes, mtimes
/// and (best effort) xattrs are kept; device nodes are skipped with one log line.
///
/// On error `dest` is left partially written, and so it is when the input
/// turns out not to be the blob it should be (the caller checks the blob's
/// digest): unpack into a scratch directory, and only move it into place
/// once the blob and the returned diff id are verified (the
/// [`crate::Store`] does).
pub fn unpack_layer_from(
    input: impl Read + Send + 'static,
    media_type: &str,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    let archive_err = |e: io::Error| Error::Unpack {
        image: opts.image.clone(),
        layer: opts.layer.clone(),
        entry: String::new(),
        source: e,
    };
    if !is_supported_layer_media_type(media_type) {
        return Err(archive_err(io::Error::other(format!(
            "unsupported layer media type {media_type}"
        ))));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dest)
        .map_err(archive_err)?;
    let (reader, inflater) = inflate::spawn(input).map_err(archive_err)?;
    let mut archive = tar::Archive::new(reader);
    let mut ctx = Ctx {
        dest,
        opts,
        report: UnpackReport::default(),
        real_root: is_real_root(),
        umask: current_umask(),
        deferred_dirs: Vec::new(),
        chown_warned: false,
        known_dirs: HashSet::new(),
        buf: vec![0; CHUNK],
    };
    for entry in archive.entries().map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        ctx.entry(entry)?;
    }
    // Directory modes and times last, deepest first.
    let mut dirs = std::mem::take(&mut ctx.deferred_dirs);
    dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
    for (p, mode, mtime) in dirs {
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode));
        if let Some(t) = mtime {
            let _ = filetime::set_symlink_file_times(&p, t, t);
        }
    }
    // Whatever follows the tar's end is part of the diff id too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(archive_err)?;
    drop(rest);
    let diff_id = inflater
        .join()
        .map_err(|_| archive_err(io::Error::other("the inflate thread panicked")))?
        .map_err(archive_err)?;
    if let Some(want) = &opts.expected_diff_id {
        if *want != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("{}: uncompressed layer {}", opts.image, opts.layer),
                expected: want.clone(),
                actual: diff_id,
            });
        }
    }
    if ctx.report.skipped_devices > 0 {
        tracing::info!(image = %opts.image, layer = %opts.layer,
            "skipped {} device node(s): sandboxes get their devices from the runtime", ctx.report.skipped_devices);
    }
    ctx.report.diff_id = diff_id;
    Ok(ctx.report)
}

/// Unpacks layers for the [`crate::Store`]. The default, [`InProcessUnpacker`],
/// calls [`unpack_layer`] in this process; the worker provides one that runs
/// the same function in a user-namespace helper so that owners are kept.
pub trait LayerUnpacker: Send + Sync {
    /// Unpack the layer read from `input` (a blob file, or the read end of a
    /// pipe fed as the layer downloads) into the (new) directory `dest`, as
    /// [`unpack_layer_from`] does. The caller trusts `dest` only once it has
    /// verified the blob's digest and the returned diff id.
    fn unpack(
        &self,
        input: OwnedFd,
        media_type: &str,
        dest: &Path,
        opts: &UnpackOptions,
    ) -> Result<UnpackReport>;

    /// The [`crate::tree_digest`] of an unpacked tree, as this unpacker's
    /// owners see it. Override as [`LayerUnpacker::remove_tree`] is (files
    /// owned by sub-uids, unreadable here); the default hashes in this process.
    fn tree_digest(&self, dir: &Path) -> Result<String> {
        crate::tree_digest::tree_digest(dir)
            .map_err(|e| Error::io(format!("hashing the tree {}", dir.display()), e))
    }

    /// Remove an unpacked tree (a layer being evicted, or scratch left by a
    /// crash). Override when the tree holds files this process cannot delete
    /// (owned by sub-uids); the default uses `std::fs::remove_dir_all`.
    fn remove_tree(&self, path: &Path) -> Result<()> {
        match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
}

/// [`LayerUnpacker`] that calls [`unpack_layer`] in the current process.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessUnpacker;

impl LayerUnpacker for InProcessUnpacker {
    fn unpack(
        &self,
        input: OwnedFd,
        media_type: &str,
        dest: &Path,
        opts: &UnpackOptions,
    ) -> Result<UnpackReport> {
        unpack_layer_from(File::from(input), media_type, dest, opts)
    }
}
