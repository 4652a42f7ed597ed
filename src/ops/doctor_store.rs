//! `doctor`'s row for the directories that must be private to the worker:
//! the image store, the state directory (runs' upper layers) and
//! `HOST_DIRECTORY` (job directories, data). Image root is the worker's
//! user on the host, so a file an image or a program leaves there (a
//! setuid one included) is the worker's: another account that can reach
//! it can run it as the worker and read the broker password. Podman keeps
//! its rootless storage 0700 for the same reason; the worker creates these
//! 0700, and this row finds those made otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::check::Check;

pub const NAME: &str = "private dirs";

/// One row over `dirs` (label, the setting that moves it, path), for the
/// worker's user `uid`/`user`.
pub fn row(dirs: &[(&str, &str, &Path)], uid: u32, user: &str) -> Check {
    let mut open = Vec::new();
    let mut foreign = Vec::new();
    let mut shared = Vec::new();
    let mut problems = Vec::new();
    let mut fine = Vec::new();
    for &(label, var, dir) in dirs {
        let shown = dir.display();
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fine.push(format!(
                    "{label} {shown} (not made yet; the worker makes it 0700)"
                ));
            }
            Err(e) => problems.push(format!("cannot read {label} {shown}: {e}")),
            Ok(m) => {
                let mode = m.mode() & 0o7777;
                if mode & 0o1002 == 0o1002 {
                    // A shared temporary directory (/tmp): not to be closed.
                    problems.push(format!(
                        "{label} {shown} is a directory every account shares (mode {mode:04o})"
                    ));
                    shared.push(var);
                } else if m.uid() != uid {
                    let owner = crate::sandbox::idmap::user_name(m.uid())
                        .unwrap_or_else(|| format!("uid {}", m.uid()));
                    problems.push(format!(
                        "{label} {shown} is owned by {owner}, not {user} (mode {mode:04o})"
                    ));
                    foreign.push(quote(dir));
                } else if mode & 0o077 != 0 {
                    problems.push(format!(
                        "{label} {shown} has mode {mode:04o}: other accounts can reach what \
                         images and programs leave there"
                    ));
                    open.push(quote(dir));
                } else {
                    fine.push(format!("{label} {shown}"));
                }
            }
        }
    }
    if problems.is_empty() {
        return Check::ok(
            NAME,
            format!("mode 0700, owned by {user}: {}", fine.join(", ")),
        );
    }
    let mut fixes = Vec::new();
    if !open.is_empty() {
        fixes.push(format!("`chmod 700 {}`", open.join(" ")));
    }
    if !foreign.is_empty() {
        fixes.push(format!(
            "as root: `chown {user} {d} && chmod 700 {d}`, or point the setting at a directory \
             {user} owns",
            d = foreign.join(" ")
        ));
    }
    if !shared.is_empty() {
        fixes.push(format!(
            "set {} to a directory of the worker's own",
            shared.join(" and ")
        ));
    }
    if fixes.is_empty() {
        fixes.push(format!("make each a directory {user} owns with mode 0700"));
    }
    Check::warn(NAME, problems.join("; "), fixes.join("; "))
}

fn quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    shlex::try_quote(&s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| s.into_owned())
}
