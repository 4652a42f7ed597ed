//! The image's `User` as numeric ids: `uid[:gid]` as is, names looked up
//! in the image's own `/etc/passwd` and `/etc/group`, as `docker run` does
//! (read as hostile input by `sandbox::image_files`).

use std::path::PathBuf;

pub use crate::sandbox::image_files::MAX_DB_BYTES;
use crate::sandbox::image_files::{lookup, read_db, Unreadable};

/// Why a `User` could not be turned into ids.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user `{user}` is not in the image's /etc/passwd{}", found_in(.passwd))]
    UnknownUser { user: String, passwd: bool },
    #[error("group `{group}` is not in the image's /etc/group{}", found_in(.group_file))]
    UnknownGroup { group: String, group_file: bool },
    #[error("the image's {path} cannot be read safely: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the image's {path} has a bad entry for `{name}`: {line}")]
    BadEntry {
        path: String,
        name: String,
        line: String,
    },
}

impl From<Unreadable> for UserError {
    fn from(u: Unreadable) -> Self {
        UserError::Unreadable {
            path: u.path,
            reason: u.reason,
        }
    }
}

fn found_in(present: &bool) -> &'static str {
    if *present {
        ""
    } else {
        " (the image has no such file)"
    }
}

/// `(uid, gid)` for the image `User` string `user` on `layers` (overlay
/// lower directories, top-most first). Empty means root.
pub fn resolve(user: &str, layers: &[PathBuf]) -> Result<(u32, u32), UserError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        // A numeric uid needs no entry; its primary group comes from one
        // when there is one, else 0 (as Docker).
        Ok(uid) => {
            let entry = match g {
                Some(_) => None,
                None => lookup(layers, "etc/passwd", |f| f[2] == u)?.map(|f| f[3].clone()),
            };
            (uid, entry)
        }
        Err(_) => {
            let fields = lookup(layers, "etc/passwd", |f| f[0] == u)?;
            let Some(f) = fields else {
                return Err(UserError::UnknownUser {
                    user: u.into(),
                    passwd: read_db(layers, "etc/passwd")?.is_some(),
                });
            };
            let uid = parse_id(&f[2], "/etc/passwd", u, &f)?;
            (uid, Some(f[3].clone()))
        }
    };
    let gid = match (g, primary) {
        (Some(g), _) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let Some(f) = lookup(layers, "etc/group", |f| f[0] == g)? else {
                    return Err(UserError::UnknownGroup {
                        group: g.into(),
                        group_file: read_db(layers, "etc/group")?.is_some(),
                    });
                };
                parse_id(&f[2], "/etc/group", g, &f)?
            }
        },
        (None, Some(gid)) => parse_id(&gid, "/etc/passwd", u, std::slice::from_ref(&gid))?,
        (None, None) => 0,
    };
    Ok((uid, gid))
}

fn parse_id(s: &str, path: &str, name: &str, fields: &[String]) -> Result<u32, UserError> {
    s.parse().map_err(|_| UserError::BadEntry {
        path: path.into(),
        name: name.into(),
        line: fields.join(":"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    #[test]
    fn names_and_numbers_resolve_as_docker() {
        let l = layer(&[("etc/passwd", PASSWD), ("etc/group", GROUP)]);
        let layers = vec![l.path().to_path_buf()];
        assert_eq!(resolve("app", &layers).unwrap(), (1000, 1001));
        assert_eq!(resolve("app:staff", &layers).unwrap(), (1000, 50));
        assert_eq!(resolve("app:7", &layers).unwrap(), (1000, 7));
        assert_eq!(resolve("1000", &layers).unwrap(), (1000, 1001));
        assert_eq!(resolve("4242", &layers).unwrap(), (4242, 0));
        assert_eq!(resolve("4242:staff", &layers).unwrap(), (4242, 50));
        assert_eq!(resolve("", &layers).unwrap(), (0, 0));
        let e = resolve("nobody", &layers).unwrap_err().to_string();
        assert!(
            e.contains("`nobody` is not in the image's /etc/passwd"),
            "{e}"
        );
    }

    #[test]
    fn the_top_layer_wins() {
        let top = layer(&[("etc/passwd", "app:x:2000:2000::/:/bin/sh\n")]);
        let low = layer(&[("etc/passwd", PASSWD)]);
        let layers = vec![top.path().to_path_buf(), low.path().to_path_buf()];
        assert_eq!(resolve("app", &layers).unwrap(), (2000, 2000));
    }

    #[test]
    fn a_symlinked_passwd_is_refused_not_followed() {
        let outside = layer(&[("passwd", PASSWD)]);
        let l = tempfile::tempdir().unwrap();
        std::fs::create_dir(l.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), l.path().join("etc/passwd"))
            .unwrap();
        let e = resolve("app", &[l.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        // A symlinked /etc too.
        let l2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), l2.path().join("etc")).unwrap();
        let e = resolve("app", &[l2.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn a_huge_passwd_is_refused() {
        let l = layer(&[("etc/passwd", PASSWD)]);
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(l.path().join("etc/passwd"))
            .unwrap();
        f.set_len(MAX_DB_BYTES + 10).unwrap();
        let e = resolve("app", &[l.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let l = tempfile::tempdir().unwrap();
        std::fs::create_dir(l.path().join("etc")).unwrap();
        nix::unistd::mkfifo(&l.path().join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = resolve("app", &[l.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
