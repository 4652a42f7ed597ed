//! Test fixtures shared by the workspace's integration tests:
//!
//! * [`Registry`]: a real `docker-registry` (Debian's distribution 2.8) on
//!   127.0.0.1 with a generated config, storage in a temp dir and an access
//!   log; killed on drop. [`start_token_proxy`] puts a bearer-token double
//!   in front of one.
//! * Test images: tar layers from entry lists ([`layer`], [`E`]), from
//!   /bin/busybox ([`busybox_layer`], [`busybox_rootfs_layer`]) or from a
//!   directory ([`layer_from_dir`]); [`TestImage`] (config and manifest);
//!   OCI image layouts ([`write_oci_layout`]) and archives ([`tar_dir`]).
//! * Pushes with oci-client ([`push`], [`push_with`], [`push_index`]).
//! * [`build_busybox_rootfs`]: a rootfs directory for sandboxes.
//! * [`ReadOnlyMount`]: a read-only bind mount (as root), undone on drop.
//!
//! Needs the Debian packages `docker-registry` and `busybox-static`.

pub mod image;
pub mod mount;
pub mod push;
pub mod registry;
pub mod rootfs;

pub use image::*;
pub use mount::*;
pub use push::*;
pub use registry::*;
pub use rootfs::*;
