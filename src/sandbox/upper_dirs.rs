//! Directories made in a run's (empty) upper layer before the overlay is
//! mounted, so that overlayfs has nothing to copy up where the sandbox
//! creates mount points and the working directory.
//!
//! overlayfs cannot copy up a directory whose owner or group is not mapped
//! in the sandbox's user namespace: a `--rootfs` tree that the user owns
//! but whose group is still root (after `sudo debootstrap` and
//! `chown -R user DIR`) made every new mount point below one of its
//! directories fail with libcontainer's bare "failed to prepare rootfs".
//! A directory already in the upper layer is merged with the lower one
//! instead, and needs no copy-up. Where that cannot help (a directory the
//! namespace's root cannot even search: its owner is not mapped and its
//! mode shuts others out), [`explain_unmapped`] names it, its owner and
//! the fix.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::idmap::IdMaps;
use super::types::RunSpec;

/// The paths the runtime creates in a run's rootfs (all of whose
/// components may be created): every bind's mount point,
/// `/etc/resolv.conf`, and a name in the working directory.
pub fn made_paths(run: &RunSpec) -> Vec<PathBuf> {
    let cwd = Path::new("/").join(&run.cwd).join("_");
    run.binds
        .iter()
        .map(|b| b.destination.clone())
        .chain([PathBuf::from("/etc/resolv.conf"), cwd])
        .collect()
}

/// Directories programs write in, made in the upper layer too (as
/// "a name in" them): a tree whose directories belong to root's group (not
/// mapped) still takes files there. Elsewhere in such a tree a write
/// fails with EOVERFLOW ([`rootfs_tree_warning`] says so up front).
pub const SCRATCH_DIRS: [&str; 2] = ["/tmp/_", "/var/tmp/_"];

/// The directories on the way to `path` (the root, then each component
/// but the last), relative to the rootfs.
fn on_the_way(path: &Path) -> Option<Vec<PathBuf>> {
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut rel = PathBuf::new();
    let mut out = vec![rel.clone()];
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        rel.push(part);
        out.push(rel.clone());
    }
    Some(out)
}

/// For every path in `paths` (absolute, inside the rootfs), make in
/// `upper` each directory on the way to it (not the path itself) that the
/// lower `layers` (top-most first) hold as a directory, with the lower
/// directory's mode and (as root of the user namespace) owner. Stops at
/// the first component that is missing or not a directory in the lower
/// layers: what lies below is created by the runtime in a directory
/// already in the upper layer, or resolved inside the container. Best
/// effort: a failure leaves the copy-up to overlayfs, as before.
pub fn prepare<'a>(upper: &Path, layers: &[PathBuf], paths: impl IntoIterator<Item = &'a Path>) {
    for path in paths {
        let Some(dirs) = on_the_way(path) else {
            continue;
        };
        // The root is the upper layer's own.
        for rel in dirs.into_iter().skip(1) {
            let Some(lower) = layers
                .iter()
                .find_map(|l| fs::symlink_metadata(l.join(&rel)).ok())
            else {
                break;
            };
            if !lower.is_dir() {
                break;
            }
            let dir = upper.join(&rel);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => break,
                Err(_) => {}
            }
            if fs::DirBuilder::new()
                .mode(lower.mode() & 0o7777)
                .create(&dir)
                .is_err()
            {
                break;
            }
            let _ = std::os::unix::fs::lchown(&dir, Some(lower.uid()), Some(lower.gid()));
            // The umask may have narrowed the mode.
            let _ = fs::set_permissions(
                &dir,
                std::os::unix::fs::PermissionsExt::from_mode(lower.mode() & 0o7777),
            );
        }
    }
}

/// Why the runtime could not make its mount points, when a directory of
/// the lower layers on the way to one of [`made_paths`] belongs to a user
/// or group the sandbox does not map (a `--rootfs` tree with a directory
/// of another account, or of root's group, that the user namespace cannot
/// search or copy up). Names the directory, its owner and the fix, for the
/// caller to add to libcontainer's bare "failed to prepare rootfs". Run on
/// the host, as the worker's user.
pub fn explain_unmapped(run: &RunSpec, maps: &IdMaps) -> Option<String> {
    let mut first = None;
    'paths: for path in made_paths(run) {
        let Some(dirs) = on_the_way(&path) else {
            continue;
        };
        for rel in dirs {
            let Some((layer, m)) = run
                .layers
                .iter()
                .find_map(|l| Some((l, fs::symlink_metadata(l.join(&rel)).ok()?)))
            else {
                continue 'paths;
            };
            if !m.is_dir() {
                continue 'paths;
            }
            if maps.maps_host_uid(m.uid()) && maps.maps_host_gid(m.gid()) {
                continue;
            }
            // Not searchable by the namespace's root (it has no privilege
            // over ids it does not map): certainly the one.
            let blocks = m.mode() & 0o001 == 0;
            if blocks || first.is_none() {
                first = Some((layer.clone(), rel, m, path.clone()));
            }
            if blocks {
                break 'paths;
            }
        }
    }
    let (layer, rel, m, target) = first?;
    let (user, group) = worker_user_and_group();
    Some(format!(
        "{inside} ({host}) belongs to {owner} (mode {mode:04o}), ids this sandbox does not \
         map (only {user}'s and its subordinate ids are), so the mount point {target} cannot be \
         made below it. Fix: as root, `chown -R {user}:{group} {layer}` (every file of a rootfs \
         tree must belong to {user} or one of its subordinate ids)",
        inside = Path::new("/").join(&rel).display(),
        host = layer.join(&rel).display(),
        owner = owner_and_group(m.uid(), m.gid()),
        mode = m.mode() & 0o7777,
        target = target.display(),
        layer = quote(&layer),
    ))
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| format!("gid {gid}"))
}

/// A warning for a `--rootfs` tree whose top directories (those in its
/// root) belong to an owner or group the sandbox does not map, as
/// after `sudo debootstrap` and `chown -R user DIR`: programs cannot write
/// below them (overlayfs cannot copy such a directory up; the kernel says
/// EOVERFLOW) but in the directories of [`SCRATCH_DIRS`] and the mount
/// points. Names them, their owners and the fix. Run on the host.
pub fn rootfs_tree_warning(tree: &Path, maps: &IdMaps) -> Option<String> {
    // Not the root (the upper layer's own), nor what mounts cover or the
    // sandbox makes writable.
    let covered = ["dev", "proc", "sys", "tmp"];
    let mut dirs: Vec<PathBuf> = fs::read_dir(tree)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !covered.iter().any(|c| e.file_name() == *c))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let unmapped: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            let m = fs::symlink_metadata(d).ok()?;
            let mapped = maps.maps_host_uid(m.uid()) && maps.maps_host_gid(m.gid());
            (m.is_dir() && !mapped).then(|| {
                let inside = Path::new("/").join(d.strip_prefix(tree).unwrap_or(d));
                format!(
                    "{} ({})",
                    inside.display(),
                    owner_and_group(m.uid(), m.gid())
                )
            })
        })
        .collect();
    if unmapped.is_empty() {
        return None;
    }
    let named = match unmapped.len() {
        n if n > 4 => format!("{} and {} more", unmapped[..4].join(", "), n - 4),
        _ => unmapped.join(", "),
    };
    let (user, group) = worker_user_and_group();
    Some(format!(
        "the rootfs {} holds directories whose owner or group this sandbox does not map: \
         {named}; programs cannot write below them (\"Value too large for defined data type\") \
         except in /tmp and /var/tmp. Fix: as root, `chown -R {user}:{group} {}` (every file of \
         a rootfs tree must belong to {user} or one of its subordinate ids)",
        tree.display(),
        quote(tree),
    ))
}

fn owner_and_group(uid: u32, gid: u32) -> String {
    let owner = super::idmap::user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    format!("{owner}:{}", group_name(gid))
}

fn worker_user_and_group() -> (String, String) {
    let uid = nix::unistd::getuid().as_raw();
    let user = super::idmap::user_name(uid).unwrap_or_else(|| uid.to_string());
    (user, group_name(nix::unistd::getgid().as_raw()))
}

fn quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    shlex::try_quote(&s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| s.into_owned())
}
