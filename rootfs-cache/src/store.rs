//! The on-disk image store: its options, layout, records and lookups.
//!
//! Layout below the root (every directory 0700, see `perms`):
//!
//! * `blobs/sha256/<hex>`: manifests and configs of the images held;
//! * `l/<16 hex of diff id>/`: an unpacked layer, with `l/<id>.json` (its
//!   diff id and sizes) written before it is renamed into place;
//! * `images/<32 hex of name>.json`: one record per image name;
//! * `leases/<manifest hex>`: leases (shared flocks), listing the layer
//!   directories they protect;
//! * `locks/`: per-blob and per-layer locks, and `gc.lock`;
//! * `tmp/<instance>/`: each open store's scratch, with `tmp/<instance>.lock`.
//!
//! Pulling and installing layers is in `pull`, leases and garbage
//! collection in `gc`, imports of OCI layouts and `docker save` archives
//! in `import`.

mod gc;
mod import;
mod pull;
mod shared;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth;
use crate::bounds::UnpackBounds;
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, FileLock};
use crate::manifest::{self, ImageConfig};
use crate::reference::RegistriesConf;
use crate::unpack::{InProcessUnpacker, LayerUnpacker, Ownership};

pub use gc::{Lease, PruneReport};

/// Default size bound of a store: 20 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// How a [`Store`] behaves.
#[derive(Clone)]
pub struct StoreOptions {
    /// Size bound in bytes (unpacked layers + kept blobs). After each pull or
    /// import that leaves the store above it, least recently used images that
    /// are not leased are evicted. Default [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// registries.conf candidates; the first existing one is used.
    /// Default [`RegistriesConf::default_paths`].
    pub registries_conf_files: Vec<PathBuf>,
    /// Auth files, in order. Default [`auth::default_auth_files`].
    pub auth_files: Vec<PathBuf>,
    /// Platform picked from manifest lists: `(os, arch)`. Default: the host's.
    pub platform: (String, String),
    /// Who unpacks layers. Default [`InProcessUnpacker`].
    pub unpacker: Arc<dyn LayerUnpacker>,
    /// File owner policy for unpacking. Default [`Ownership::BestEffort`].
    pub ownership: Ownership,
    /// Layers downloaded at once per pull. Default 3.
    pub max_concurrent_downloads: usize,
    /// What one image may unpack to (bytes of files, entries), checked
    /// while each layer unpacks and for the image's layers together. The
    /// byte bound is never above `max_bytes`. Default [`UnpackBounds::default`].
    pub image_bounds: UnpackBounds,
    /// Cap on an image pulled from a registry: the sum of the compressed
    /// layer sizes its manifest lists, checked before any blob is fetched
    /// ([`Error::OverSizeCap`]). Default `None`: no cap.
    pub max_image_size: Option<u64>,
    /// Shared stores, only read (never written, locked or collected),
    /// consulted in order when an image is not in this one: their layers
    /// are used in place, each checked against the tree digest the store
    /// recorded when it was filled. Default: none.
    pub additional_stores: Vec<PathBuf>,
    /// Record each new layer's tree digest (what a shared store needs).
    /// Default `false`.
    pub record_tree_digests: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            registries_conf_files: RegistriesConf::default_paths(),
            auth_files: auth::default_auth_files(),
            platform: manifest::host_platform(),
            unpacker: Arc::new(InProcessUnpacker),
            ownership: Ownership::default(),
            max_concurrent_downloads: 3,
            image_bounds: UnpackBounds::default(),
            max_image_size: None,
            additional_stores: Vec::new(),
            record_tree_digests: false,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_bytes", &self.max_bytes)
            .field("registries_conf_files", &self.registries_conf_files)
            .field("auth_files", &self.auth_files)
            .field("platform", &self.platform)
            .field("ownership", &self.ownership)
            .field("image_bounds", &self.image_bounds)
            .field("max_image_size", &self.max_image_size)
            .field("additional_stores", &self.additional_stores)
            .field("record_tree_digests", &self.record_tree_digests)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    media_type: String,
    size: u64,
    unpacked_size: u64,
    /// Entries (inodes and links) of the unpacked layer.
    #[serde(default)]
    entries: u64,
    /// Relative to the store root: `l/<16 hex of diff id>`.
    dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    name: String,
    manifest_digest: String,
    config_digest: String,
    /// Bottom-most first, as in the manifest.
    layers: Vec<LayerRecord>,
    size: u64,
    /// Entries of its layers.
    #[serde(default)]
    entries: u64,
    pulled_at_ms: u64,
    last_used_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    diff_id: String,
    unpacked_size: u64,
    #[serde(default)]
    entries: u64,
    /// [`crate::tree_digest`] of the unpacked layer, when the store records
    /// them ([`StoreOptions::record_tree_digests`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tree_digest: Option<String>,
}

/// An image in the store, ready to be used as an overlay rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Canonical reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the (platform) image manifest.
    pub manifest_digest: String,
    /// Digest of the image config.
    pub config_digest: String,
    /// Unpacked layer directories in overlay `lowerdir` order: top-most first.
    pub layers: Vec<PathBuf>,
    /// Runtime configuration from the image config.
    pub config: ImageConfig,
    /// Bytes of file content in its layers.
    pub size: u64,
}

impl Image {
    /// The `lowerdir=` value for an overlay mount (`:`-joined, top-most first).
    pub fn lowerdir(&self) -> String {
        self.layers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// One line of [`Store::images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Canonical reference.
    pub name: String,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Bytes of file content in its layers.
    pub size: u64,
    /// Entries (inodes and links) in its layers.
    pub entries: u64,
    /// Last pull, import or lease.
    pub last_used: SystemTime,
    /// Whether a running job holds a lease on it.
    pub in_use: bool,
}

struct Inner {
    root: PathBuf,
    opts: StoreOptions,
    conf: RegistriesConf,
    /// This instance's scratch directory under `tmp/`.
    scratch: PathBuf,
    /// `tmp/<id>.lock`, held by `_instance` (opened under another name).
    instance_path: PathBuf,
    _instance: FileLock,
    counter: AtomicU64,
    /// Shared layers whose tree digest this process checked: (directory,
    /// digest).
    verified: std::sync::Mutex<BTreeSet<(PathBuf, String)>>,
}

impl Drop for Inner {
    /// The last clone of a `Store` is gone: delete its scratch and its
    /// instance lock file (still locked, so no cleaner takes the scratch for
    /// a crashed process's), so that a normal exit leaves nothing in `tmp/`.
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.scratch).is_err() && self.scratch.exists() {
            // Sub-uid-owned leftovers: only the unpacker's namespace can
            // delete them. If that fails too, the next open retries.
            if self.opts.unpacker.remove_tree(&self.scratch).is_err() {
                return;
            }
        }
        let _ = fs::remove_file(&self.instance_path);
    }
}

/// A local image store. Cheap to clone; safe to share between threads, and
/// between processes opening the same directory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn short_id(digest: &str) -> &str {
    let h = hex_of(digest);
    &h[..h.len().min(16)]
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Write `data` to `path` atomically (temp file in `scratch`, fsync, rename).
fn write_atomic(scratch: &Path, n: u64, path: &Path, data: &[u8]) -> Result<()> {
    let tmp = scratch.join(format!("w-{n}"));
    let mut f = fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming into {}", path.display()))
}

fn record_path_in(root: &Path, name: &str) -> PathBuf {
    root.join("images")
        .join(format!("{}.json", &sha256_hex(name.as_bytes())[..32]))
}

/// The image records of the store in `root`, by name.
fn load_records_in(root: &Path) -> Result<Vec<ImageRecord>> {
    let dir = root.join("images");
    let mut v = Vec::new();
    for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        if e.path().extension().is_some_and(|x| x == "json") {
            match fs::read(e.path()).map(|b| serde_json::from_slice::<ImageRecord>(&b)) {
                Ok(Ok(r)) => v.push(r),
                _ => {
                    tracing::warn!(path = %e.path().display(), "ignoring unreadable image record")
                }
            }
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// Removes a scratch path on drop unless disarmed.
struct Cleanup<'a> {
    path: Option<PathBuf>,
    unpacker: &'a dyn LayerUnpacker,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if p.is_dir() {
                let _ = self.unpacker.remove_tree(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

impl Store {
    /// Open (creating if needed) the store in `root`, and clean the scratch
    /// left by crashed processes.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store> {
        let root: PathBuf = root.into();
        crate::perms::make_private(&root)?;
        let conf = RegistriesConf::load(&opts.registries_conf_files)?;
        let tmp = root.join("tmp");
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        // Lock a file under a name the cleaner ignores, then rename it into place,
        // so that it is never seen unlocked.
        let new = tmp.join(format!(".new-{id}"));
        let instance = lock::exclusive(&new)?;
        let lock_path = tmp.join(format!("{id}.lock"));
        fs::rename(&new, &lock_path).ctx(|| format!("renaming {}", new.display()))?;
        let scratch = tmp.join(&id);
        fs::create_dir_all(&scratch).ctx(|| format!("creating {}", scratch.display()))?;
        let store = Store {
            inner: Arc::new(Inner {
                root,
                opts,
                conf,
                scratch,
                instance_path: lock_path,
                _instance: instance,
                counter: AtomicU64::new(0),
                verified: Default::default(),
            }),
        };
        store.clean_tmp(&id)?;
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The registries configuration in use.
    pub fn registries_conf(&self) -> &RegistriesConf {
        &self.inner.conf
    }

    /// [`StoreOptions::image_bounds`], its bytes never above the store's bound.
    fn image_bounds(&self) -> UnpackBounds {
        let o = &self.inner.opts;
        UnpackBounds {
            max_bytes: o.image_bounds.max_bytes.min(o.max_bytes),
            ..o.image_bounds
        }
    }

    fn next(&self) -> u64 {
        self.inner.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn clean_tmp(&self, own: &str) -> Result<()> {
        let tmp = self.inner.root.join("tmp");
        let mut live = BTreeSet::new();
        live.insert(own.to_string());
        let entries: Vec<_> = fs::read_dir(&tmp)
            .ctx(|| format!("listing {}", tmp.display()))?
            .flatten()
            .collect();
        let mut held = Vec::new();
        for e in &entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".lock") else {
                continue;
            };
            if stem == own {
                continue;
            }
            match lock::try_exclusive(&e.path())? {
                // Owner is dead: its scratch is junk.
                Some(l) => held.push((stem.to_string(), l)),
                None => {
                    live.insert(stem.to_string());
                }
            }
        }
        for e in &entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") {
                // A lock file that was never renamed into place: only when old
                // (it may be a Store opening right now) and unlocked.
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(600));
                if old {
                    if let Some(l) = lock::try_exclusive(&e.path())? {
                        let _ = fs::remove_file(l.path());
                    }
                }
                continue;
            }
            if name.ends_with(".lock") || live.contains(&name) {
                continue;
            }
            tracing::info!(path = %e.path().display(), "removing scratch left by a crashed process");
            let _ = self.inner.opts.unpacker.remove_tree(&e.path());
        }
        for (_, l) in held {
            let _ = fs::remove_file(l.path());
        }
        Ok(())
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        record_path_in(&self.inner.root, name)
    }

    fn lock_path(&self, kind: &str, digest: &str) -> PathBuf {
        self.inner
            .root
            .join("locks")
            .join(format!("{kind}-{}.lock", short_id(digest)))
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.inner.root.join("locks/gc.lock")
    }

    fn layer_dir(&self, diff_id: &str) -> (String, PathBuf) {
        let rel = format!("l/{}", short_id(diff_id));
        let abs = self.inner.root.join(&rel);
        (rel, abs)
    }
    // ---------------------------------------------------------------- index

    fn load_records(&self) -> Result<Vec<ImageRecord>> {
        load_records_in(&self.inner.root)
    }

    fn image_from_record(&self, rec: &ImageRecord, cfg: Option<ImageConfig>) -> Result<Image> {
        let cfg = match cfg {
            Some(c) => c,
            None => {
                let p = self.blob_path(&rec.config_digest);
                let b = fs::read(&p).ctx(|| format!("reading image config {}", p.display()))?;
                manifest::parse_config(&rec.name, &b)?.0
            }
        };
        Ok(Image {
            name: rec.name.clone(),
            manifest_digest: rec.manifest_digest.clone(),
            config_digest: rec.config_digest.clone(),
            layers: rec
                .layers
                .iter()
                .rev()
                .map(|l| self.inner.root.join(&l.dir))
                .collect(),
            config: cfg,
            size: rec.size,
        })
    }

    fn find_record(&self, reference: &str) -> Result<ImageRecord> {
        self.find_record_in(&self.inner.root, reference)
    }

    /// The record of `reference` in the store in `root` (this one or a
    /// shared one), found as a pull would name it, or by manifest digest.
    fn find_record_in(&self, root: &Path, reference: &str) -> Result<ImageRecord> {
        let candidates = self.inner.conf.resolve(reference)?;
        for c in &candidates {
            let name = c.canonical();
            if let Ok(b) = fs::read(record_path_in(root, &name)) {
                if let Ok(r) = serde_json::from_slice::<ImageRecord>(&b) {
                    if r.name == name {
                        return Ok(r);
                    }
                }
            }
        }
        // A digest reference also matches any record with that manifest digest.
        let p = crate::reference::parse(reference)?;
        if let Some(d) = p.digest {
            if let Some(r) = load_records_in(root)?
                .into_iter()
                .find(|r| r.manifest_digest == d)
            {
                return Ok(r);
            }
        }
        Err(Error::NotFound(
            candidates
                .first()
                .map(|c| c.canonical())
                .unwrap_or_else(|| reference.to_string()),
        ))
    }

    /// An image already in the store (no network), by reference; else one
    /// in a shared store ([`StoreOptions::additional_stores`]), checked
    /// first ([`Error::SharedStore`] when it fails a check).
    pub fn get(&self, reference: &str) -> Result<Image> {
        match self.get_own(reference) {
            Err(Error::NotFound(name)) => self.get_shared(reference)?.ok_or(Error::NotFound(name)),
            found => found,
        }
    }

    fn get_own(&self, reference: &str) -> Result<Image> {
        let rec = self.find_record(reference)?;
        for l in &rec.layers {
            if !self.inner.root.join(&l.dir).is_dir() {
                return Err(Error::NotFound(rec.name.clone()));
            }
        }
        self.image_from_record(&rec, None)
    }
    fn write_record(&self, rec: &ImageRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec)
            .map_err(|e| Error::io("encoding record", io::Error::other(e)))?;
        write_atomic(
            &self.inner.scratch,
            self.next(),
            &self.record_path(&rec.name),
            &data,
        )
    }
    /// Images in the store, most recently used first.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let (leased, _, _stale) = self.leased_manifests()?;
        let mut v: Vec<ImageInfo> = self
            .load_records()?
            .into_iter()
            .map(|r| ImageInfo {
                in_use: leased.contains(hex_of(&r.manifest_digest)),
                name: r.name,
                manifest_digest: r.manifest_digest,
                size: r.size,
                entries: r.entries,
                last_used: UNIX_EPOCH + Duration::from_millis(r.last_used_ms),
            })
            .collect();
        v.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.name.cmp(&b.name)));
        Ok(v)
    }

    /// Bytes free for this user on the store's file system (0 when it
    /// cannot be read).
    pub fn free_bytes(&self) -> u64 {
        fs4::available_space(&self.inner.root).unwrap_or(0)
    }

    /// Bytes held: unpacked layers referenced by images or leases, plus kept blobs.
    pub fn total_bytes(&self) -> Result<u64> {
        let recs = self.load_records()?;
        let mut sizes = BTreeMap::new();
        for r in &recs {
            for l in &r.layers {
                sizes.insert(l.dir.clone(), l.unpacked_size);
            }
        }
        Ok(sizes.values().sum::<u64>() + self.blobs_bytes())
    }

    fn blobs_bytes(&self) -> u64 {
        fs::read_dir(self.inner.root.join("blobs/sha256"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::testing::{add, listing, names, opts, store, unique};
    use super::*;

    #[test]
    fn digests_name_files_by_their_hex() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(hex_of(&d), &d[7..]);
        assert_eq!(hex_of("abc"), "abc");
        assert_eq!(short_id(&d), "abababababababab");
        assert_eq!(short_id("sha256:12"), "12");
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let p = s.record_path("docker.io/library/a:1");
        assert_eq!(p, s.record_path("docker.io/library/a:1"));
        assert_ne!(p, s.record_path("docker.io/library/a:2"));
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(file.len(), 32 + ".json".len());
        assert_eq!(p.parent().unwrap(), s.root().join("images"));
        assert_eq!(s.blob_path(&d), s.root().join("blobs/sha256").join(&d[7..]));
        assert_eq!(s.layer_dir(&d).0, "l/abababababababab");
    }

    #[test]
    fn open_makes_a_private_layout_and_each_instance_its_own_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path()), store(dir.path()));
        for d in [
            "",
            "blobs",
            "blobs/sha256",
            "l",
            "images",
            "locks",
            "leases",
            "tmp",
        ] {
            let m = fs::metadata(a.root().join(d)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d:?}");
        }
        assert_ne!(a.inner.scratch, b.inner.scratch);
        assert_eq!(listing(&a, "tmp").len(), 4, "two scratches, two locks");
        drop(a);
        assert_eq!(listing(&b, "tmp").len(), 2);
        drop(b);
        let root = dir.path().join("store");
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_lock_file_never_renamed_into_place_goes_only_when_old_and_free() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("store/tmp");
        let s = store(dir.path());
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        let (fresh, stale, held) = (
            tmp.join(".new-fresh"),
            tmp.join(".new-stale"),
            tmp.join(".new-held"),
        );
        for p in [&fresh, &stale, &held] {
            fs::write(p, b"").unwrap();
        }
        filetime::set_file_mtime(&stale, old).unwrap();
        filetime::set_file_mtime(&held, old).unwrap();
        // A store being opened right now holds it.
        let lock = FileLock::exclusive(&held).unwrap();
        let again = store(dir.path());
        assert!(fresh.exists() && held.exists());
        assert!(!stale.exists());
        drop((lock, again, s));
    }

    #[tokio::test]
    async fn lookups_resolve_names_and_digests_and_skip_unreadable_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let shared = || unique("shared", 3000);
        let a = add(
            &s,
            d,
            "docker.io/library/a:1",
            vec![shared(), unique("a", 100)],
        )
        .await;
        let b = add(&s, d, "localhost/b:1", vec![shared(), unique("b", 200)]).await;
        // Short names resolve as a pull's would.
        assert_eq!(s.get("a:1").unwrap(), a);
        // A digest reference finds the image under any name.
        let by_digest = format!("localhost/elsewhere@{}", b.manifest_digest);
        assert_eq!(s.get(&by_digest).unwrap(), b);
        assert!(matches!(s.get("localhost/b:2"), Err(Error::NotFound(n)) if n == "localhost/b:2"));
        // Top-most layer first, as overlayfs wants it.
        assert_eq!(
            a.lowerdir(),
            format!("{}:{}", a.layers[0].display(), a.layers[1].display())
        );
        // The shared layer counts once.
        let blobs = s.blobs_bytes();
        assert_eq!(s.total_bytes().unwrap(), 3000 + 100 + 200 + blobs);
        fs::write(s.root().join("images/junk.json"), b"{").unwrap();
        assert_eq!(names(&s), ["docker.io/library/a:1", "localhost/b:1"]);
    }

    #[test]
    fn a_store_bound_below_the_image_bound_caps_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.image_bounds.max_bytes = 5000;
        o.max_bytes = 7000;
        let s = Store::open(dir.path().join("a"), o.clone()).unwrap();
        assert_eq!(s.image_bounds().max_bytes, 5000);
        o.max_bytes = 3000;
        let s = Store::open(dir.path().join("b"), o.clone()).unwrap();
        assert_eq!(s.image_bounds().max_bytes, 3000);
        assert_eq!(s.image_bounds().max_entries, o.image_bounds.max_entries);
    }
}
