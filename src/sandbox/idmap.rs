//! User-namespace id mappings: the caller's own id becomes root inside, and
//! its subordinate ranges from /etc/subuid and /etc/subgid become 1..N.
//!
//! The maps are written with the setuid `newuidmap`/`newgidmap` helpers from
//! the `uidmap` package; when the caller is real root it writes them itself.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use thiserror::Error;

/// One contiguous range: `inside..inside+count` maps to `outside..outside+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid mappings of a sandbox's user namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

#[derive(Debug, Error)]
pub enum IdMapError {
    #[error(
        "{file} has no range for user {user} (uid {uid}): rootless sandboxes need one. \
         Fix: as root, `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}` \
         (or `compute-worker setup-host --user {user}`)"
    )]
    NoRange {
        file: PathBuf,
        user: String,
        uid: u32,
    },
    #[error("cannot read {file}: {source}. Fix: create it (package `passwd`/`login`) and add a range for this user")]
    Unreadable { file: PathBuf, source: io::Error },
    #[error(
        "`{tool}` was not found on PATH: rootless sandboxes need it to map subordinate ids. \
         Fix: `apt-get install uidmap` (Debian/Ubuntu) or `dnf install shadow-utils`"
    )]
    ToolMissing { tool: &'static str },
    #[error("`{tool} {args}` failed: {detail}. Check that {tool} is setuid root (or has cap_setuid/cap_setgid) and that the ranges in /etc/subuid and /etc/subgid belong to this user")]
    ToolFailed {
        tool: &'static str,
        args: String,
        detail: String,
    },
    #[error("writing {file} failed: {source}")]
    Write { file: PathBuf, source: io::Error },
    #[error("cannot make the user namespace the sandboxes share ({step}): {source}")]
    Hold {
        step: &'static str,
        source: io::Error,
    },
}

impl IdMaps {
    /// The maps for the current user: own id → 0, subordinate range → 1..=N.
    ///
    /// Real root without subordinate ranges maps the id space onto itself
    /// (it is root on the host anyway); with ranges it uses them like
    /// everyone else.
    pub fn for_current_user() -> Result<Self, IdMapError> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let user = user_name(uid).unwrap_or_else(|| uid.to_string());
        Self::for_user(
            &user,
            uid,
            gid,
            Path::new("/etc/subuid"),
            Path::new("/etc/subgid"),
        )
    }

    pub fn for_user(
        user: &str,
        uid: u32,
        gid: u32,
        subuid_file: &Path,
        subgid_file: &Path,
    ) -> Result<Self, IdMapError> {
        let sub_u = subordinate_range(subuid_file, user, uid);
        let sub_g = subordinate_range(subgid_file, user, uid);
        if uid == 0 {
            if let (Ok(u), Ok(g)) = (&sub_u, &sub_g) {
                return Ok(Self::with_ranges(uid, gid, *u, *g));
            }
            // Not quite the whole id space: libcontainer takes an identity
            // map of all 2^32-1 ids for the initial namespace, and would then
            // believe it runs as real root rather than in a user namespace.
            let all = IdRange {
                inside: 0,
                outside: 0,
                count: u32::MAX - 1,
            };
            return Ok(Self {
                uids: vec![all],
                gids: vec![all],
            });
        }
        Ok(Self::with_ranges(uid, gid, sub_u?, sub_g?))
    }

    fn with_ranges(uid: u32, gid: u32, sub_u: (u32, u32), sub_g: (u32, u32)) -> Self {
        let own = |id| IdRange {
            inside: 0,
            outside: id,
            count: 1,
        };
        let sub = |(start, count)| IdRange {
            inside: 1,
            outside: start,
            count,
        };
        Self {
            uids: vec![own(uid), sub(sub_u)],
            gids: vec![own(gid), sub(sub_g)],
        }
    }

    /// Host uid of `inside`, if mapped.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        lookup(&self.uids, inside)
    }

    /// Host gid of `inside`, if mapped.
    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        lookup(&self.gids, inside)
    }

    /// Whether the host uid `outside` has an id in the namespace.
    pub fn maps_host_uid(&self, outside: u32) -> bool {
        maps_outside(&self.uids, outside)
    }

    /// Whether the host gid `outside` has an id in the namespace.
    pub fn maps_host_gid(&self, outside: u32) -> bool {
        maps_outside(&self.gids, outside)
    }

    /// Write both maps for process `pid`, which must have just unshared its
    /// user namespace and be waiting.
    pub fn apply(&self, pid: u32) -> Result<(), IdMapError> {
        if nix::unistd::geteuid().is_root() {
            // Real root may write the maps directly; deny setgroups is not
            // needed because we hold CAP_SETGID in the parent namespace.
            write_map(pid, "uid_map", &self.uids)?;
            write_map(pid, "gid_map", &self.gids)?;
            return Ok(());
        }
        if self.only_own_ids() {
            // Single-id mode: a user may map its own uid and gid without
            // newuidmap/newgidmap (which a host without subordinate ids may
            // lack), once setgroups(2) is denied in the namespace.
            write_file(pid, "setgroups", "deny")?;
            write_map(pid, "uid_map", &self.uids)?;
            write_map(pid, "gid_map", &self.gids)?;
            return Ok(());
        }
        run_map_tools(pid, self)
    }

    /// Whether the maps hold one id each: the caller's own (single-id mode).
    fn only_own_ids(&self) -> bool {
        let own =
            |r: &[IdRange], id: u32| matches!(r, [one] if one.count == 1 && one.outside == id);
        own(&self.uids, nix::unistd::getuid().as_raw())
            && own(&self.gids, nix::unistd::getgid().as_raw())
    }
}

fn maps_outside(ranges: &[IdRange], outside: u32) -> bool {
    ranges.iter().any(|r| {
        outside
            .checked_sub(r.outside)
            .is_some_and(|off| off < r.count)
    })
}

fn lookup(ranges: &[IdRange], inside: u32) -> Option<u32> {
    ranges.iter().find_map(|r| {
        let off = inside.checked_sub(r.inside)?;
        (off < r.count).then(|| r.outside + off)
    })
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn write_map(pid: u32, name: &str, ranges: &[IdRange]) -> Result<(), IdMapError> {
    write_file(pid, name, &map_text(ranges))
}

fn write_file(pid: u32, name: &str, text: &str) -> Result<(), IdMapError> {
    let file = PathBuf::from(format!("/proc/{pid}/{name}"));
    fs::write(&file, text).map_err(|source| IdMapError::Write { file, source })
}

fn map_tool_args(pid: u32, ranges: &[IdRange]) -> Vec<String> {
    let mut args = vec![pid.to_string()];
    for r in ranges {
        args.extend([r.inside, r.outside, r.count].map(|v| v.to_string()));
    }
    args
}

/// Run `newuidmap` and `newgidmap` at the same time (each is a setuid
/// program start: about a millisecond and a half).
fn run_map_tools(pid: u32, maps: &IdMaps) -> Result<(), IdMapError> {
    let jobs = [("newuidmap", &maps.uids), ("newgidmap", &maps.gids)];
    let mut children = Vec::new();
    for (tool, ranges) in jobs {
        let args = map_tool_args(pid, ranges);
        let Some(path) = tool_path(tool) else {
            children.push((tool, args, Err(IdMapError::ToolMissing { tool })));
            continue;
        };
        let child = Command::new(path)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => IdMapError::ToolMissing { tool },
                _ => IdMapError::ToolFailed {
                    tool,
                    args: args.join(" "),
                    detail: e.to_string(),
                },
            });
        children.push((tool, args, child));
    }
    let mut first_error = None;
    for (tool, args, child) in children {
        let result = child.and_then(|c| {
            let out = c.wait_with_output().map_err(|e| IdMapError::ToolFailed {
                tool,
                args: args.join(" "),
                detail: e.to_string(),
            })?;
            if out.status.success() {
                return Ok(());
            }
            Err(IdMapError::ToolFailed {
                tool,
                args: args.join(" "),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        });
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `(start, count)` of the first range in `file` for `user` (by name or uid).
pub fn subordinate_range(file: &Path, user: &str, uid: u32) -> Result<(u32, u32), IdMapError> {
    let text = fs::read_to_string(file).map_err(|source| IdMapError::Unreadable {
        file: file.to_path_buf(),
        source,
    })?;
    let uid_text = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut it = line.trim().split(':');
            let (owner, start, count) = (it.next()?, it.next()?, it.next()?);
            if owner != user && owner != uid_text {
                return None;
            }
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .find(|&(_, count): &(u32, u32)| count > 0)
        .ok_or_else(|| IdMapError::NoRange {
            file: file.to_path_buf(),
            user: user.to_string(),
            uid,
        })
}

/// The login name of `uid` from the passwd database.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Where `tool` (`newuidmap` or `newgidmap`) is on PATH, looked up once per
/// process: every run starts both, and a search in the child tries each
/// PATH entry with a failing `execve`.
fn tool_path(tool: &'static str) -> Option<&'static Path> {
    static FOUND: OnceLock<[Option<PathBuf>; 2]> = OnceLock::new();
    let found = FOUND.get_or_init(|| ["newuidmap", "newgidmap"].map(find_on_path));
    let i = ["newuidmap", "newgidmap"].iter().position(|t| *t == tool)?;
    found[i].as_deref()
}

fn find_on_path(tool: impl AsRef<OsStr>) -> Option<PathBuf> {
    which::which(tool.as_ref()).ok()
}

/// True when `tool` can be found on PATH.
pub fn tool_on_path(tool: impl AsRef<OsStr>) -> bool {
    find_on_path(tool).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subuid");
        fs::write(&f, "alice:100000:65536\n# x\n1001:200000:1000\n").unwrap();
        assert_eq!(
            subordinate_range(&f, "alice", 1000).unwrap(),
            (100000, 65536)
        );
        assert_eq!(subordinate_range(&f, "bob", 1001).unwrap(), (200000, 1000));
        let err = subordinate_range(&f, "carol", 1002)
            .unwrap_err()
            .to_string();
        assert!(err.contains("carol") && err.contains("usermod"), "{err}");
    }

    #[test]
    fn host_ids_follow_the_maps() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub");
        fs::write(&f, "alice:100000:65536\n").unwrap();
        let m = IdMaps::for_user("alice", 1000, 1000, &f, &f).unwrap();
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(1000), Some(100000 + 1000 - 1));
        assert_eq!(m.host_uid(65536), Some(100000 + 65535));
        assert_eq!(m.host_uid(65537), None);
        assert_eq!(map_text(&m.gids), "0 1000 1\n1 100000 65536\n");
        for mapped in [1000, 100000, 100000 + 65535] {
            assert!(
                m.maps_host_uid(mapped) && m.maps_host_gid(mapped),
                "{mapped}"
            );
        }
        for unmapped in [0, 999, 1001, 99999, 100000 + 65536] {
            assert!(
                !m.maps_host_uid(unmapped) && !m.maps_host_gid(unmapped),
                "{unmapped}"
            );
        }
    }
}
