//! The image cache as the worker uses it: a `rootfs_cache::Store` whose
//! layers are unpacked inside the sandbox's user namespace, and the CLI
//! verbs `pull`, `images`, `prune` and `import`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rootfs_cache::{LayerUnpacker, Store, StoreOptions, UnpackOptions, UnpackReport};

use crate::cli::{ImageArgs, ImagesArgs, ImportArgs, PruneArgs, PullArgs};
use crate::exec::Starts;
use crate::sandbox::SandboxConfig;

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
            Ok(Err(message)) => Err(rootfs_cache::Error::Io {
                context: format!("unpacking layer {} of {}", opts.layer, opts.image),
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
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("compute-worker/images");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/share/compute-worker/images")
}

/// Open the image store described by `args`, unpacking through `sandbox`.
pub fn open_store(args: &ImageArgs, sandbox: &SandboxConfig) -> Result<Store> {
    let dir = args.image_dir.clone().unwrap_or_else(default_image_dir);
    let mut opts = StoreOptions::default();
    if let Some(max) = args.image_cache_max {
        opts.max_bytes = max;
    }
    opts.unpacker = std::sync::Arc::new(UsernsUnpacker(sandbox.clone()));
    Store::open(&dir, opts).with_context(|| format!("opening the image store {}", dir.display()))
}

/// The cached image `reference`, pulled first if it is not cached, with a
/// lease that keeps it from eviction.
pub fn get_or_pull(
    args: &ImageArgs,
    sandbox: &SandboxConfig,
    reference: &str,
) -> Result<(rootfs_cache::Image, rootfs_cache::Lease)> {
    let store = open_store(args, sandbox)?;
    if let Ok(image) = store.get(reference) {
        let lease = store.lease(&image)?;
        return Ok((image, lease));
    }
    let progress = rootfs_cache::progress::auto();
    Ok(runtime()?.block_on(store.pull_and_lease(reference, &*progress))?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `1.5 GiB`-style sizes for listings and messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One line per image: name, digest, size.
fn print_images(images: &[rootfs_cache::Image]) {
    for image in images {
        println!(
            "{} {} {}",
            image.name,
            image.manifest_digest,
            human(image.size)
        );
    }
}

pub fn pull(args: PullArgs) -> Result<i32> {
    let sandbox = crate::exec::sandbox_config(&args.sandbox, None, Starts::Many)?;
    let store = open_store(&args.images, &sandbox)?;
    let progress = rootfs_cache::progress::auto();
    let image = runtime()?.block_on(store.pull(&args.image, &*progress))?;
    print_images(&[image]);
    Ok(0)
}

pub fn import(args: ImportArgs) -> Result<i32> {
    let sandbox = crate::exec::sandbox_config(&args.sandbox, None, Starts::Many)?;
    let store = open_store(&args.images, &sandbox)?;
    let progress = rootfs_cache::progress::auto();
    let images = runtime()?.block_on(store.import(&args.path, args.name.as_deref(), &*progress))?;
    print_images(&images);
    Ok(0)
}

pub fn list(args: ImagesArgs) -> Result<i32> {
    let sandbox = crate::exec::sandbox_config(&args.sandbox, None, Starts::One)?;
    let store = open_store(&args.images, &sandbox)?;
    let images = store.images()?;
    if args.json {
        let rows: Vec<serde_json::Value> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "digest": i.manifest_digest,
                    "size": i.size,
                    "last_used": i.last_used.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "in_use": i.in_use,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<50} {:<20} {:>10}  {:<20} IN USE",
        "NAME", "DIGEST", "SIZE", "LAST USED"
    );
    for i in images {
        let ago = i.last_used.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        let digest: String = i.manifest_digest.chars().take(19).collect();
        println!(
            "{:<50} {:<20} {:>10}  {:<20} {}",
            i.name,
            digest,
            human(i.size),
            format!("{} ago", crate::cli::format_age(ago)),
            if i.in_use { "yes" } else { "" }
        );
    }
    Ok(0)
}

pub fn prune(args: PruneArgs) -> Result<i32> {
    let sandbox = crate::exec::sandbox_config(&args.sandbox, None, Starts::Many)?;
    let store = open_store(&args.images, &sandbox)?;
    let target = if args.all {
        0
    } else {
        args.keep
            .or(args.images.image_cache_max)
            .unwrap_or(rootfs_cache::DEFAULT_MAX_BYTES)
    };
    let report = store.prune(target)?;
    for name in &report.removed {
        println!("removed {name}");
    }
    for name in &report.kept_in_use {
        println!("kept {name} (in use by a running job)");
    }
    println!("freed {}", human(report.freed_bytes));
    Ok(0)
}
