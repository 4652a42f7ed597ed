//! Which ids a sandbox's user namespace maps: the worker's own id and its
//! subordinate ranges (the normal mode), or, on a host that gives the user
//! no `/etc/subuid` range, only the worker's own uid and gid, both as 0
//! ("single-id mode", as enroot runs and podman's `ignore_chown_errors`).
//!
//! In single-id mode every file in the sandbox belongs to one owner, and
//! processes inside cannot be separated by uid: layers are unpacked without
//! their owners, every program runs as 0 whatever the image's `User`, and
//! the seccomp filter makes `chown` and the `set*id` calls succeed without
//! effect (see `seccomp_single_id.rs`), so that package managers and the
//! Codabench examples, which change owners and drop privileges, work.

use std::path::Path;

use super::idmap::{subordinate_range, IdMapError, IdMaps, IdRange};
use super::types::RunSpec;

/// The `id_mode` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdModeSetting {
    /// Subordinate ids when the user has ranges, single-id mode otherwise.
    #[default]
    Auto,
    /// Subordinate ids; refuse to start without ranges.
    Subids,
    /// Map only the worker's uid and gid, even when ranges exist.
    Single,
}

/// The mode a sandbox runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IdMode {
    Subids,
    Single,
}

/// What single-id mode gives up, as the job log, `doctor` and `config` say it.
pub const SINGLE_ID_GIVES_UP: &str =
    "single-id mode: the sandbox maps only this user (as root), with no subordinate ids; \
     every file in it belongs to one owner (image owners are ignored), processes inside \
     cannot be separated by uid, and chown and the set*id calls succeed without effect";

impl IdMode {
    /// One line for a job's log, `doctor` and `config`.
    pub fn describe(self) -> &'static str {
        match self {
            IdMode::Subids => {
                "subordinate ids: the image's owners and users are kept (mapped to this \
                 user's /etc/subuid and /etc/subgid ranges)"
            }
            IdMode::Single => SINGLE_ID_GIVES_UP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IdMode::Subids => "subids",
            IdMode::Single => "single",
        }
    }
}

/// The maps that map only `uid` and `gid`, each to 0.
pub fn single_maps(uid: u32, gid: u32) -> IdMaps {
    let own = |id| IdRange {
        inside: 0,
        outside: id,
        count: 1,
    };
    IdMaps {
        uids: vec![own(uid)],
        gids: vec![own(gid)],
    }
}

/// The mode `setting` gives user `user` (`uid`, `gid`) with these
/// subordinate id files, and its maps. `Auto` chooses single-id mode only
/// when the user has no range (in either file); `Subids` refuses then.
pub fn resolve(
    setting: IdModeSetting,
    user: &str,
    uid: u32,
    gid: u32,
    subuid_file: &Path,
    subgid_file: &Path,
) -> Result<(IdMode, IdMaps), IdMapError> {
    if setting == IdModeSetting::Single {
        return Ok((IdMode::Single, single_maps(uid, gid)));
    }
    match IdMaps::for_user(user, uid, gid, subuid_file, subgid_file) {
        Ok(maps) => Ok((IdMode::Subids, maps)),
        Err(e @ (IdMapError::NoRange { .. } | IdMapError::Unreadable { .. }))
            if setting == IdModeSetting::Auto =>
        {
            tracing::debug!("{e}; single-id mode");
            Ok((IdMode::Single, single_maps(uid, gid)))
        }
        Err(e) => Err(e),
    }
}

/// [`resolve`] for the user this process runs as.
pub fn for_current_user(setting: IdModeSetting) -> Result<(IdMode, IdMaps), IdMapError> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = super::idmap::user_name(uid).unwrap_or_else(|| uid.to_string());
    resolve(
        setting,
        &user,
        uid,
        gid,
        Path::new("/etc/subuid"),
        Path::new("/etc/subgid"),
    )
}

/// `run` as a sandbox in `mode` runs it: in single-id mode, as 0:0, the
/// only ids there are (the image's `User` cannot be honoured).
pub fn for_mode(run: &RunSpec, mode: IdMode) -> RunSpec {
    let mut run = run.clone();
    if mode == IdMode::Single {
        run.uid = 0;
        run.gid = 0;
    }
    run
}

/// Whether gid `gid` is mapped in this process's user namespace.
pub fn gid_mapped_here(gid: u32) -> bool {
    std::fs::read_to_string("/proc/self/gid_map").is_ok_and(|text| {
        text.lines().any(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            matches!(f[..], [inside, _, count] if (inside..inside + count).contains(&u64::from(gid)))
        })
    })
}

/// Whether `user` has a range in both files (what `Auto` looks at).
pub fn has_ranges(user: &str, uid: u32, subuid_file: &Path, subgid_file: &Path) -> bool {
    subordinate_range(subuid_file, user, uid).is_ok()
        && subordinate_range(subgid_file, user, uid).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_single_only_without_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub");
        std::fs::write(&f, "alice:100000:65536\n").unwrap();
        let (mode, _) = resolve(IdModeSetting::Auto, "alice", 1000, 1000, &f, &f).unwrap();
        assert_eq!(mode, IdMode::Subids);
        let (mode, maps) = resolve(IdModeSetting::Auto, "bob", 1001, 1002, &f, &f).unwrap();
        assert_eq!(mode, IdMode::Single);
        assert_eq!(maps, single_maps(1001, 1002));
        assert_eq!(maps.host_uid(0), Some(1001));
        assert_eq!(maps.host_gid(0), Some(1002));
        assert_eq!(maps.host_uid(1), None);
        assert!(resolve(IdModeSetting::Subids, "bob", 1001, 1002, &f, &f).is_err());
        let (mode, _) = resolve(IdModeSetting::Single, "alice", 1000, 1000, &f, &f).unwrap();
        assert_eq!(mode, IdMode::Single);
    }
}
