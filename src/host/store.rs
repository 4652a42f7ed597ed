//! The image store as the worker uses it: a `rootfs_cache::Store` whose
//! layers are unpacked inside the sandbox's user namespace.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rootfs_cache::{LayerUnpacker, Store, StoreOptions, UnpackOptions, UnpackReport};

use crate::sandbox::{IdMode, SandboxConfig};

/// Unpacks layers as root of a user namespace with the sandbox's id maps,
/// so a file owned by uid 33 in the image is owned by uid 33 in the
/// sandbox (a subordinate id on the host).
pub struct UsernsUnpacker(pub SandboxConfig);

fn helper_error(e: impl std::fmt::Display) -> rootfs_cache::Error {
    rootfs_cache::Error::Io {
        context: "the user-namespace helper".into(),
        source: io::Error::other(e.to_string()),
    }
}

impl LayerUnpacker for UsernsUnpacker {
    fn unpack(
        &self,
        input: OwnedFd,
        media_type: &str,
        dest: &Path,
        opts: &UnpackOptions,
    ) -> rootfs_cache::Result<UnpackReport> {
        match self.0.unpack_layer(input, media_type, dest, opts) {
            Ok(Ok(report)) => Ok(report),
            // The system error survives the trip, so that a full disk is
            // known as one (`Error::is_no_space`).
            Ok(Err(failure)) => {
                let context = format!("unpacking layer {} of {}", opts.layer, opts.image);
                Err(match failure.errno {
                    Some(errno) => rootfs_cache::Error::Io {
                        context: format!("{context}: {}", failure.message),
                        source: io::Error::from_raw_os_error(errno),
                    },
                    None => rootfs_cache::Error::Io {
                        context,
                        source: io::Error::other(failure.message),
                    },
                })
            }
            Err(e) => Err(helper_error(e)),
        }
    }

    fn tree_digest(&self, dir: &Path) -> rootfs_cache::Result<String> {
        match self.0.tree_digest(dir) {
            Ok(Ok(digest)) => Ok(digest),
            Ok(Err(message)) => Err(rootfs_cache::Error::Io {
                context: format!("checking the layer {}", dir.display()),
                source: io::Error::other(message),
            }),
            Err(e) => Err(helper_error(e)),
        }
    }

    fn remove_tree(&self, path: &Path) -> rootfs_cache::Result<()> {
        let errors = self
            .0
            .remove_as_root(vec![path.to_path_buf()])
            .map_err(helper_error)?;
        match errors.first() {
            None => Ok(()),
            Some(e) => Err(helper_error(e)),
        }
    }
}

/// The default image directory: `$XDG_DATA_HOME/compute-worker/images`,
/// else `~/.local/share/compute-worker/images`.
pub fn default_image_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("compute-worker/images")
}

/// Where the image store is and how large it and one image may grow
/// (`None`: rootfs-cache's defaults).
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// `None`: [`default_image_dir`].
    pub dir: Option<PathBuf>,
    pub cache_max: Option<u64>,
    pub image_max_bytes: Option<u64>,
    pub image_max_entries: Option<u64>,
    /// Cap on the compressed layers of an image to pull.
    pub max_image_size: Option<u64>,
    /// Shared stores, only read, consulted before pulling.
    pub additional: Vec<PathBuf>,
    /// Record each layer's tree digest (a store that others share).
    pub record_tree_digests: bool,
}

impl StoreSettings {
    /// The settings of an administrator's `pull --store DIR` or `import
    /// --store DIR`: `DIR` is written as a normal store, recording each
    /// layer's tree digest so that workers can check it, never evicted from
    /// (workers use its layers in place) unless a cache bound is given, and
    /// reading no other shared store. `None`: `self` unchanged.
    pub fn filling(self, store: Option<PathBuf>) -> StoreSettings {
        let Some(dir) = store else { return self };
        StoreSettings {
            dir: Some(dir),
            cache_max: Some(self.cache_max.unwrap_or(u64::MAX)),
            additional: Vec::new(),
            record_tree_digests: true,
            ..self
        }
    }
}

/// Where the store of `mode` is: the image directory, or its `single-id`
/// subdirectory in single-id mode. The two are kept apart because their
/// layers differ on disk: subordinate-id mode keeps the images' owners
/// (subordinate ids on the host), single-id mode gives every file the
/// worker's own; neither mode could use, or remove, the other's layers
/// as they must be.
pub fn store_dir(s: &StoreSettings, mode: IdMode) -> PathBuf {
    let dir = s.dir.clone().unwrap_or_else(default_image_dir);
    match mode {
        IdMode::Subids => dir,
        IdMode::Single => dir.join("single-id"),
    }
}

/// Open the image store `s` describes, unpacking through `sandbox`.
pub fn open_store(s: &StoreSettings, sandbox: &SandboxConfig) -> Result<Store> {
    let dir = store_dir(s, sandbox.id_mode);
    let mut opts = StoreOptions::default();
    if sandbox.id_mode == IdMode::Single {
        // One owner for every file: the layers' owners are not kept.
        opts.ownership = rootfs_cache::Ownership::Skip;
    }
    if let Some(max) = s.cache_max {
        opts.max_bytes = max;
    }
    if let Some(max) = s.image_max_bytes {
        opts.image_bounds.max_bytes = max;
    }
    if let Some(max) = s.image_max_entries {
        opts.image_bounds.max_entries = max;
    }
    opts.max_image_size = s.max_image_size;
    opts.additional_stores = s.additional.clone();
    opts.record_tree_digests = s.record_tree_digests;
    opts.unpacker = std::sync::Arc::new(UsernsUnpacker(sandbox.clone()));
    Store::open(&dir, opts).with_context(|| format!("opening the image store {}", dir.display()))
}

/// The cached image `reference`, pulled first if it is not cached, with a
/// lease that keeps it from eviction.
pub fn get_or_pull(
    settings: &StoreSettings,
    sandbox: &SandboxConfig,
    reference: &str,
) -> Result<(rootfs_cache::Image, rootfs_cache::Lease)> {
    let store = open_store(settings, sandbox)?;
    match store.get(reference) {
        Ok(image) => {
            let lease = store.lease(&image)?;
            return Ok((image, lease));
        }
        // A shared store holds it but it fails a check: refused, not pulled.
        Err(e @ rootfs_cache::Error::SharedStore { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    let progress = rootfs_cache::progress::auto();
    Ok(runtime()?.block_on(store.pull_and_lease(reference, &*progress))?)
}

/// A one-thread runtime for a command's image work.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
