//! A digest of an unpacked layer tree: what a shared store records for each
//! layer when it is filled, and what a worker checks before it uses the
//! layer in place.
//!
//! A layer's diff id is the digest of its uncompressed tar, which cannot be
//! rebuilt from the unpacked files (tar headers are not reproducible), so
//! the tree itself is hashed: every entry, in name order per directory, as
//! its path, type, permission bits, owner, group and extended attributes
//! (`security.selinux` aside: hosts label differently), with the sha256 of a
//! regular file's content, a link's target, a device's numbers. Owners are
//! read as the caller sees them: in the worker's user namespace, so a store
//! unpacked under other subordinate ids does not match.
//!
//! Nothing is followed: entries are `lstat`ed, files opened with
//! `O_NOFOLLOW`, only real directories descended (with a stack, not
//! recursion).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of the tree below `root` (see the module's notes).
pub fn tree_digest(root: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        // Pushed in reverse, so that they are taken in name order.
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path)?;
            let ft = m.file_type();
            h.update(rel.as_os_str().as_bytes());
            h.update([0]);
            let kind = if ft.is_dir() {
                subdirs.push(rel.clone());
                "d".to_string()
            } else if ft.is_file() {
                let mut f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                format!("f {} {}", m.len(), content_digest(&mut f, &mut buf)?)
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                format!("l {}", hex::encode(target.as_os_str().as_bytes()))
            } else if ft.is_char_device() || ft.is_block_device() {
                let c = if ft.is_char_device() { 'c' } else { 'b' };
                format!("{c} {}", m.rdev())
            } else {
                "p".to_string()
            };
            h.update(format!("{kind} {:o} {} {}", m.mode() & 0o7777, m.uid(), m.gid()).as_bytes());
            for (k, v) in xattrs(&path) {
                h.update([0]);
                h.update(k.as_bytes());
                h.update(b"=");
                h.update(hex::encode(v).as_bytes());
            }
            h.update(b"\n");
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn content_digest(f: &mut File, buf: &mut [u8]) -> io::Result<String> {
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Extended attributes of `path` (not followed), sorted by name.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut v: Vec<_> = names
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n != "security.selinux")
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn every_content_name_mode_and_link_change_shows() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), b"one").unwrap();
        fs::write(r.join("g"), b"two").unwrap();
        std::os::unix::fs::symlink("a/b/f", r.join("s")).unwrap();
        let base = tree_digest(r).unwrap();
        assert_eq!(tree_digest(r).unwrap(), base);
        let changed = |f: &dyn Fn()| {
            f();
            let d = tree_digest(r).unwrap();
            assert_ne!(d, base);
            d
        };
        changed(&|| fs::write(r.join("a/b/f"), b"One").unwrap());
        fs::write(r.join("a/b/f"), b"one").unwrap();
        assert_eq!(tree_digest(r).unwrap(), base);
        changed(&|| fs::set_permissions(r.join("g"), fs::Permissions::from_mode(0o600)).unwrap());
        fs::set_permissions(r.join("g"), fs::Permissions::from_mode(0o644)).unwrap();
        // umask may have made it 0644 already or not: compare with itself.
        let base = tree_digest(r).unwrap();
        changed(&|| fs::write(r.join("a/new"), b"").unwrap());
        fs::remove_file(r.join("a/new")).unwrap();
        changed(&|| {
            fs::remove_file(r.join("s")).unwrap();
            std::os::unix::fs::symlink("g", r.join("s")).unwrap();
        });
        // A name moved between directories changes it too.
        fs::remove_file(r.join("s")).unwrap();
        std::os::unix::fs::symlink("a/b/f", r.join("s")).unwrap();
        assert_eq!(tree_digest(r).unwrap(), base);
        changed(&|| fs::rename(r.join("a/b/f"), r.join("a/f")).unwrap());
    }
}
