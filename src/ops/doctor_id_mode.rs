//! `doctor`'s row for the id mode: which one `serve` would run in, and
//! what single-id mode gives up (see `sandbox/id_mode.rs`).

use crate::sandbox::{id_mode, IdMode, IdModeSetting};

use super::check::Check;

pub const NAME: &str = "id mode";

/// The mode `setting` gives this user, if it can be decided.
pub fn mode(setting: IdModeSetting) -> Option<IdMode> {
    id_mode::for_current_user(setting).ok().map(|(m, _)| m)
}

/// The row: ok with subordinate ids, a warning in single-id mode (it runs,
/// but gives things up), skipped when `subids` is required and missing
/// (the subuid/subgid rows fail then).
pub fn row(setting: IdModeSetting, mode: Option<IdMode>, user: &str) -> Check {
    match mode {
        Some(IdMode::Subids) => Check::ok(NAME, format!("subids: {}", IdMode::Subids.describe())),
        Some(IdMode::Single) => {
            let why = match setting {
                IdModeSetting::Single => "configured (COMPUTE_WORKER_ID_MODE=single)",
                _ => "no /etc/subuid or /etc/subgid range for this user",
            };
            Check::warn(
                NAME,
                format!("single ({why}): {}", IdMode::Single.describe()),
                format!(
                    "to keep image owners and separate uids, give {user} a range: as root, \
                     `compute-worker setup-host --user {user}`"
                ),
            )
        }
        None => Check::skip(NAME, "subids required (COMPUTE_WORKER_ID_MODE=subids)"),
    }
}

/// The rows single-id mode does not need.
pub fn not_needed() -> Vec<Check> {
    ["subuid", "subgid", "newuidmap", "newgidmap"]
        .into_iter()
        .map(|name| Check::skip(name, "not used in single-id mode"))
        .collect()
}
