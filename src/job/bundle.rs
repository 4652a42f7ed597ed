//! Bundles: safe extraction of downloaded zips and zipping of the output
//! folder.
//!
//! Extraction keeps member paths as they are (a zip of a folder yields
//! `program/<folder>/...`, as in the Python worker) but refuses what
//! Python's `extractall` would not protect against: entries escaping the
//! destination, symlinks pointing outside it, and zip bombs (a cap on the
//! bytes actually written and on the number of entries).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Copy the tree `from` over `to`: directories merged, a file replacing
/// whatever non-directory entry `to` holds under its name (a link there is
/// replaced, never followed). Links in `from` are left out, and a file
/// whose name is a directory in `to` is skipped with a warning.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        let existing = std::fs::symlink_metadata(&dst).ok().map(|m| m.file_type());
        if t.is_dir() {
            if existing.is_some_and(|d| !d.is_dir()) {
                std::fs::remove_file(&dst)?;
            }
            copy_dir(&src, &dst)?;
        } else if t.is_file() {
            match existing {
                Some(d) if d.is_dir() => {
                    tracing::warn!(path = %dst.display(), "a directory is in the way of a file; skipped");
                    continue;
                }
                Some(_) => std::fs::remove_file(&dst)?,
                None => {}
            }
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

pub use super::bounds::UnzipLimits;

/// Why a bundle could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum UnzipError {
    /// The message the Python worker reports to the site.
    #[error("Bad or empty zip file")]
    BadZip(String),
    #[error("zip entry `{0}` would be written outside the bundle directory")]
    PathEscape(String),
    #[error("zip symlink `{0}` points outside the bundle directory")]
    SymlinkEscape(String),
    #[error("bundle expands to more than {0} bytes, the limit COMPUTE_WORKER_BUNDLE_MAX; refusing it (a zip bomb?)")]
    TooLarge(u64),
    #[error("bundle has more than {0} entries, the limit COMPUTE_WORKER_BUNDLE_MAX_ENTRIES; refusing it")]
    TooManyEntries(usize),
    #[error("extracting {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnzipError + '_ {
    move |source| UnzipError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Normalize a relative path lexically; `None` if it climbs out.
fn normalize_inside(rel: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Where the link at `link` (relative to the bundle) leads once every link
/// of the bundle (`links`: path -> target) on the way is followed; `None`
/// if it climbs out, is absolute, or loops (as the kernel, 40 links).
fn resolve_inside(link: &Path, links: &HashMap<PathBuf, String>) -> Option<PathBuf> {
    let mut at = link.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut queue = link_components(links.get(link)?)?;
    let mut followed = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if !at.pop() {
                return None;
            }
            continue;
        }
        at.push(&c);
        if let Some(target) = links.get(&at) {
            followed += 1;
            if followed > 40 {
                return None;
            }
            at.pop();
            let mut expanded = link_components(target)?;
            expanded.extend(queue.drain(..));
            queue = expanded;
        }
    }
    Some(at)
}

/// The names and `..`s of a link's target; `None` if it is absolute.
fn link_components(target: &str) -> Option<VecDeque<OsString>> {
    let mut out = VecDeque::new();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::ParentDir => out.push_back("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Extract `zip_path` into `dest` (created if needed). Symlinks are made
/// last, after every file is written, and only if they stay inside once
/// every other link of the bundle is followed.
pub fn extract_zip(zip_path: &Path, dest: &Path, limits: UnzipLimits) -> Result<(), UnzipError> {
    let file = std::fs::File::open(zip_path).map_err(io(zip_path))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| UnzipError::BadZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(UnzipError::TooManyEntries(limits.max_entries));
    }
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut written = 0u64;
    let mut links = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| UnzipError::BadZip(e.to_string()))?;
        let name = entry.name().to_string();
        let rel = entry
            .enclosed_name()
            .and_then(|p| normalize_inside(&p))
            .ok_or_else(|| UnzipError::PathEscape(name.clone()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let out = dest.join(&rel);
        if entry.is_symlink() {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .map_err(|e| UnzipError::BadZip(e.to_string()))?;
            links.push((rel, name, target));
            continue;
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(io(&out))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut f = std::fs::File::create(&out).map_err(io(&out))?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| UnzipError::BadZip(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > limits.max_bytes {
                return Err(UnzipError::TooLarge(limits.max_bytes));
            }
            f.write_all(&buf[..n]).map_err(io(&out))?;
        }
        #[cfg(unix)]
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let perm = std::fs::Permissions::from_mode(mode & 0o755 | 0o600);
            std::fs::set_permissions(&out, perm).map_err(io(&out))?;
        }
    }
    let table: HashMap<PathBuf, String> = links
        .iter()
        .map(|(rel, _, target)| (rel.clone(), target.clone()))
        .collect();
    for (rel, name, target) in &links {
        // A second link of the same name would be checked as the first.
        if table.get(rel) != Some(target) || resolve_inside(rel, &table).is_none() {
            return Err(UnzipError::SymlinkEscape(name.clone()));
        }
    }
    for (rel, _, target) in links {
        let link = dest.join(rel);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
    }
    Ok(())
}

/// Zip the *contents* of `dir` (paths relative to it, directory entries
/// included, files deflated) into `out_zip`, like `shutil.make_archive`.
pub fn zip_dir_contents(dir: &Path, out_zip: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out_zip)?;
    let mut zw = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            if path == out_zip {
                continue;
            }
            let rel_path = path.strip_prefix(dir).map_err(std::io::Error::other)?;
            let rel = rel_path.to_string_lossy().replace('\\', "/");
            let ft = e.file_type()?;
            if ft.is_dir() {
                zw.add_directory(format!("{rel}/"), opts)
                    .map_err(std::io::Error::other)?;
                stack.push(path);
            } else if ft.is_file() {
                // Opened beneath `dir` without following links: a file
                // swapped for a link since the listing is refused.
                let mut f = super::beneath::open_read(dir, rel_path)
                    .map_err(std::io::Error::other)?
                    .ok_or_else(|| {
                        std::io::Error::other(format!("{rel} vanished while zipping"))
                    })?;
                zw.start_file(rel, opts).map_err(std::io::Error::other)?;
                std::io::copy(&mut f, &mut zw)?;
            }
            // Symlinks and special files written by programs are left out:
            // following them could leak files from outside the output.
        }
    }
    zw.finish().map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_zip(path: &Path, build: impl FnOnce(&mut zip::ZipWriter<std::fs::File>)) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        build(&mut w);
        w.finish().unwrap();
    }
    fn opts() -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default()
    }

    #[test]
    fn extracts_files_dirs_and_inside_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("b.zip");
        make_zip(&z, |w| {
            w.add_directory("sub/", opts()).unwrap();
            w.start_file("sub/metadata.yaml", opts()).unwrap();
            w.write_all(b"command: python run.py\n").unwrap();
            w.add_symlink("link", "sub/metadata.yaml", opts()).unwrap();
        });
        let out = t.path().join("program");
        extract_zip(&z, &out, UnzipLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("sub/metadata.yaml")).unwrap(),
            "command: python run.py\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("link")).unwrap(),
            "command: python run.py\n"
        );
    }

    #[test]
    fn refuses_escapes_bombs_and_garbage() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("b.zip");
        let out = t.path().join("o");
        make_zip(&z, |w| {
            w.start_file("../evil", opts()).unwrap();
            w.write_all(b"x").unwrap();
        });
        assert!(matches!(
            extract_zip(&z, &out, UnzipLimits::default()),
            Err(UnzipError::PathEscape(_))
        ));
        assert!(!t.path().join("evil").exists());

        make_zip(&z, |w| {
            w.add_symlink("l", "../../etc/passwd", opts()).unwrap();
        });
        assert!(matches!(
            extract_zip(&z, &out, UnzipLimits::default()),
            Err(UnzipError::SymlinkEscape(_))
        ));
        make_zip(&z, |w| {
            w.add_symlink("l", "/etc/passwd", opts()).unwrap();
        });
        assert!(matches!(
            extract_zip(&z, &out, UnzipLimits::default()),
            Err(UnzipError::SymlinkEscape(_))
        ));

        make_zip(&z, |w| {
            w.start_file(
                "zeros",
                opts().compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
            w.write_all(&vec![0u8; 1 << 20]).unwrap();
        });
        let small = UnzipLimits {
            max_bytes: 1000,
            max_entries: 10,
        };
        assert!(matches!(
            extract_zip(&z, &out, small),
            Err(UnzipError::TooLarge(1000))
        ));
        make_zip(&z, |w| {
            for i in 0..11 {
                w.start_file(format!("f{i}"), opts()).unwrap();
            }
        });
        assert!(matches!(
            extract_zip(&z, &out, small),
            Err(UnzipError::TooManyEntries(10))
        ));

        std::fs::write(&z, b"").unwrap();
        let e = extract_zip(&z, &out, UnzipLimits::default()).unwrap_err();
        assert_eq!(e.to_string(), "Bad or empty zip file");
    }

    #[test]
    fn link_chains_are_followed_before_judging() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("b.zip");
        let refused = |links: &[(&str, &str)]| {
            make_zip(&z, |w| {
                w.add_directory("d/", opts()).unwrap();
                for (l, target) in links {
                    w.add_symlink(*l, *target, opts()).unwrap();
                }
            });
            let out = t.path().join(format!("o{}", links.len()));
            let _ = std::fs::remove_dir_all(&out);
            match extract_zip(&z, &out, UnzipLimits::default()) {
                Err(UnzipError::SymlinkEscape(name)) => Some(name),
                Ok(()) => None,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(refused(&[("s", "."), ("x", "s/s/../..")]), Some("x".into()));
        assert_eq!(
            refused(&[("d/up", ".."), ("y", "d/up/d/up/..")]),
            Some("y".into())
        );
        assert_eq!(refused(&[("a", "b"), ("b", "a")]), Some("a".into()));
        assert_eq!(refused(&[("d/l", "../d"), ("m", "d/l/l/..")]), None);
    }

    #[test]
    fn zips_the_contents_not_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("output");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("scores.json"), "{}").unwrap();
        std::fs::write(dir.join("sub/p.txt"), "1").unwrap();
        let z = t.path().join("out.zip");
        zip_dir_contents(&dir, &z).unwrap();
        let mut a = zip::ZipArchive::new(std::fs::File::open(&z).unwrap()).unwrap();
        let mut names: Vec<_> = (0..a.len())
            .map(|i| a.by_index(i).unwrap().name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["scores.json", "sub/", "sub/p.txt"]);
        // Links a program leaves are left out, never their targets' content.
        std::fs::write(t.path().join("secret"), "pw").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), dir.join("s")).unwrap();
        zip_dir_contents(&dir, &z).unwrap();
        let a = zip::ZipArchive::new(std::fs::File::open(&z).unwrap()).unwrap();
        assert_eq!(a.len(), 3);
        let back = t.path().join("back");
        extract_zip(&z, &back, UnzipLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(back.join("sub/p.txt")).unwrap(),
            "1"
        );
    }
}
