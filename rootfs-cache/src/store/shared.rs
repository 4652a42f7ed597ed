//! Shared stores ([`StoreOptions::additional_stores`](super::StoreOptions)):
//! stores filled by an administrator (`Store` with
//! `record_tree_digests`), that this process only reads. Nothing here
//! writes, locks or collects in them, so they may sit on a read-only mount
//! or a file system other workers read at the same time; their layers are
//! used in place as overlay lower directories.
//!
//! Before an image of a shared store is used, everything that leads from
//! its name to its files is checked:
//!
//! * the store and each layer directory belong to this process's uid (the
//!   user that fills a shared store must be the one the workers run as:
//!   its layers' files belong to that user's subordinate ids);
//! * the manifest and config blobs hash to the digests the record names,
//!   and the record's layers are the manifest's, with the config's diff ids;
//! * each layer's metadata names that diff id, and the layer's files hash
//!   to the tree digest recorded when the store was filled
//!   ([`crate::tree_digest`], computed by the store's unpacker, so owners
//!   are seen as the sandbox sees them). A layer checked once is not hashed
//!   again by this process.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{hex_of, sha256_hex, short_id, Image, LayerMeta, Store};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};

impl Store {
    /// The image `reference` from the first shared store holding it, checked.
    pub(super) fn get_shared(&self, reference: &str) -> Result<Option<Image>> {
        for root in &self.inner.opts.additional_stores {
            if let Some(image) = self.shared_image(root, reference)? {
                return Ok(Some(image));
            }
        }
        Ok(None)
    }

    fn shared_image(&self, root: &Path, reference: &str) -> Result<Option<Image>> {
        let refuse = |reason: String| Error::SharedStore {
            store: root.to_path_buf(),
            image: reference.to_string(),
            reason,
        };
        let me = nix::unistd::geteuid().as_raw();
        match fs::metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(store = %root.display(), "the shared image store does not exist");
                return Ok(None);
            }
            Err(e) => return Err(refuse(format!("cannot read it: {e}"))),
            Ok(m) if m.uid() != me => return Err(refuse(not_ours(m.uid(), me))),
            Ok(_) => {}
        }
        let rec = match self.find_record_in(root, reference) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let refuse = |reason: String| Error::SharedStore {
            store: root.to_path_buf(),
            image: rec.name.clone(),
            reason,
        };
        let blob = |digest: &str, what: &str| -> Result<Vec<u8>> {
            if !crate::reference::validate_digest(digest) {
                return Err(refuse(format!(
                    "its record names {what} {digest:?}, not sha256:<64 hex>"
                )));
            }
            let p = root.join("blobs/sha256").join(hex_of(digest));
            let b =
                read_small(&p).map_err(|e| refuse(format!("its {what} {}: {e}", p.display())))?;
            let actual = format!("sha256:{}", sha256_hex(&b));
            if actual != digest {
                return Err(refuse(format!(
                    "its {what} {} fails its digest check: expected {digest}, got {actual}",
                    p.display()
                )));
            }
            Ok(b)
        };
        let m = manifest::parse_manifest(&rec.name, &blob(&rec.manifest_digest, "manifest")?)?;
        let Manifest::Image { config, layers } = m else {
            return Err(refuse("its manifest is not an image manifest".into()));
        };
        if config.digest != rec.config_digest {
            return Err(refuse(format!(
                "its record names config {}, its manifest {}",
                rec.config_digest, config.digest
            )));
        }
        let (cfg, diff_ids) = manifest::parse_config(&rec.name, &blob(&config.digest, "config")?)?;
        let same = rec.layers.len() == layers.len()
            && layers.len() == diff_ids.len()
            && rec
                .layers
                .iter()
                .zip(layers.iter().zip(&diff_ids))
                .all(|(r, (l, d))| r.digest == l.digest && r.diff_id == *d);
        if !same {
            return Err(refuse(
                "its record's layers are not those of its manifest and config".into(),
            ));
        }
        let mut dirs = Vec::with_capacity(diff_ids.len());
        for diff_id in &diff_ids {
            dirs.push(self.shared_layer(root, diff_id).map_err(refuse)?);
        }
        dirs.reverse();
        Ok(Some(Image {
            name: rec.name.clone(),
            manifest_digest: rec.manifest_digest.clone(),
            config_digest: rec.config_digest.clone(),
            layers: dirs,
            config: cfg,
            size: rec.size,
        }))
    }

    /// The directory of layer `diff_id` in the shared store `root`, checked
    /// (see the module's notes); `Err` says why it is refused.
    fn shared_layer(&self, root: &Path, diff_id: &str) -> Result<PathBuf, String> {
        let dir = root.join("l").join(short_id(diff_id));
        let meta_path = dir.with_extension("json");
        let meta: LayerMeta = read_small(&meta_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("layer {diff_id}: its metadata {}: {e}", meta_path.display()))?;
        if meta.diff_id != diff_id {
            return Err(format!(
                "layer {diff_id}: its metadata {} names layer {}",
                meta_path.display(),
                meta.diff_id
            ));
        }
        let m = fs::symlink_metadata(&dir)
            .map_err(|e| format!("layer {diff_id}: {}: {e}", dir.display()))?;
        if !m.is_dir() {
            return Err(format!(
                "layer {diff_id}: {} is not a directory",
                dir.display()
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if m.uid() != me {
            return Err(format!(
                "layer {diff_id}: {}: {}",
                dir.display(),
                not_ours(m.uid(), me)
            ));
        }
        let Some(recorded) = meta.tree_digest else {
            return Err(format!(
                "layer {diff_id} ({}) has no recorded tree digest to check it against: \
                 fill shared stores with `compute-worker pull --store` or `import --store`",
                dir.display()
            ));
        };
        let key = (dir.clone(), recorded.clone());
        if self.verified().contains(&key) {
            return Ok(dir);
        }
        let actual = self
            .inner
            .opts
            .unpacker
            .tree_digest(&dir)
            .map_err(|e| format!("layer {diff_id}: {e}"))?;
        if actual != recorded {
            return Err(format!(
                "layer {diff_id} ({}) fails its digest check: its files hash to {actual}, \
                 the store recorded {recorded} when it was filled: a file in it was changed, \
                 added or removed (or the store was filled under other subordinate ids than \
                 this worker's)",
                dir.display()
            ));
        }
        self.verified().insert(key);
        Ok(dir)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<(PathBuf, String)>> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Bound on a JSON file of a shared store (manifest, config, layer metadata).
const MAX_JSON: u64 = 16 << 20;

/// A regular file of at most [`MAX_JSON`] bytes, not followed if a link.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.len() > MAX_JSON {
        return Err(io::Error::other(format!(
            "not a regular file of at most {MAX_JSON} bytes"
        )));
    }
    let mut b = Vec::with_capacity(m.len() as usize);
    f.take(MAX_JSON).read_to_end(&mut b)?;
    Ok(b)
}

/// Why a shared store (or layer) owned by `owner` is refused to `me`.
fn not_ours(owner: u32, me: u32) -> String {
    format!(
        "it belongs to uid {owner}, not to this worker's uid {me}: the owners of its layers' \
         files would not map in the sandbox; fill a shared store as the user the workers run as"
    )
}
