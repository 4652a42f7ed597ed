//! The store is private to its user (0700), as Podman keeps its rootless
//! storage: image root is the worker's user on the host, so any file of an
//! image that other accounts could reach would be theirs to run or read.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// The store's directories, below its root.
const DIRS: [&str; 6] = ["blobs/sha256", "l", "images", "locks", "leases", "tmp"];

/// Create the store's directories with mode 0700, and take group and other
/// access away from existing ones (a store made by an older version). The
/// root is changed only when this user owns it.
pub(crate) fn make_private(root: &Path) -> Result<()> {
    let mkdir = |p: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .ctx(|| format!("creating store directory {}", p.display()))
    };
    mkdir(root)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut dirs = vec![root.to_path_buf()];
    for d in DIRS {
        let p = root.join(d);
        mkdir(&p)?;
        if let Some(parent) = p.parent().filter(|q| *q != root) {
            dirs.push(parent.to_path_buf());
        }
        dirs.push(p);
    }
    for p in dirs {
        let m = fs::metadata(&p).ctx(|| format!("reading {}", p.display()))?;
        if m.mode() & 0o077 != 0 && m.uid() == me {
            fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7700))
                .ctx(|| format!("making {} private (mode 0700)", p.display()))?;
        }
    }
    Ok(())
}
