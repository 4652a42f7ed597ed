//! A new mount namespace's first step: stop mount events from crossing
//! back to the namespace it was copied from.

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

/// Make every mount of this (new) mount namespace private, recursively.
pub fn make_mounts_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the mount namespace private")
}
