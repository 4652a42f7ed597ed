//! The on-disk image store: blobs, unpacked layers, image index, leases, GC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth;
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, Lock};
use crate::manifest::{self, Descriptor, ImageConfig, Manifest};
use crate::progress::{Progress, ProgressEvent};
use crate::reference::{ImageRef, RegistriesConf};
use crate::unpack::{InProcessUnpacker, LayerUnpacker, Ownership, UnpackOptions};

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
    pulled_at_ms: u64,
    last_used_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    diff_id: String,
    unpacked_size: u64,
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
    /// Last pull, import or lease.
    pub last_used: SystemTime,
    /// Whether a running job holds a lease on it.
    pub in_use: bool,
}

/// What [`Store::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images removed, least recently used first.
    pub removed: Vec<String>,
    /// Images that would have been removed but are leased.
    pub kept_in_use: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes the store holds afterwards.
    pub remaining_bytes: u64,
}

/// Keeps an image from being evicted while it is held (a shared flock on
/// `leases/<manifest hex>`; the kernel drops it if the process dies).
#[derive(Debug)]
pub struct Lease {
    _lock: Lock,
    image: String,
}

impl Lease {
    /// The leased image's name.
    pub fn image(&self) -> &str {
        &self.image
    }
}

struct Inner {
    root: PathBuf,
    opts: StoreOptions,
    conf: RegistriesConf,
    /// This instance's scratch directory under `tmp/`.
    scratch: PathBuf,
    /// `tmp/<id>.lock`, held by `_instance` (opened under another name).
    instance_path: PathBuf,
    _instance: Lock,
    counter: AtomicU64,
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

/// A pipe from the download to the unpacker: `(read end, write end)`, both
/// close-on-exec (the unpacker may hand the read end to a helper process),
/// with a 1 MiB buffer when the system allows it.
fn layer_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: F_SETPIPE_SZ only changes the buffer size of a pipe we own.
    unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((rx, tx))
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

/// Where blobs come from.
enum Source<'a> {
    Registry {
        client: &'a oci_client::Client,
        oref: &'a oci_client::Reference,
    },
    /// Local files by digest (an OCI layout or a docker-save archive).
    Local(&'a HashMap<String, PathBuf>),
}

impl Store {
    /// Open (creating if needed) the store in `root`, and clean the scratch
    /// left by crashed processes.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store> {
        let root: PathBuf = root.into();
        for d in ["blobs/sha256", "l", "images", "locks", "leases", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx(|| format!("creating store directory {}", p.display()))?;
        }
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
        let instance = Lock::exclusive(&new)?;
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
            match Lock::try_exclusive(&e.path())? {
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
                    if let Some(l) = Lock::try_exclusive(&e.path())? {
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
        self.inner
            .root
            .join("images")
            .join(format!("{}.json", &sha256_hex(name.as_bytes())[..32]))
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

    // ---------------------------------------------------------------- pull

    /// Pull `reference` (docker/podman syntax) into the store and return it.
    /// Unqualified names are tried against each search registry in turn.
    ///
    /// A job that is going to run the image should use [`Store::pull_and_lease`]
    /// instead, so that no concurrent eviction can remove it in between.
    pub async fn pull(&self, reference: &str, progress: &dyn Progress) -> Result<Image> {
        Ok(self.pull_and_lease(reference, progress).await?.0)
    }

    /// [`Store::pull`], returning the image already leased (see [`Store::lease`]).
    pub async fn pull_and_lease(
        &self,
        reference: &str,
        progress: &dyn Progress,
    ) -> Result<(Image, Lease)> {
        let candidates = self.inner.conf.resolve(reference)?;
        let mut attempts = Vec::new();
        let n = candidates.len();
        for c in candidates {
            match self.pull_one(&c, progress).await {
                Ok(i) => return Ok(i),
                // Only "could not get it from here" moves on to the next registry;
                // integrity and safety errors stop at once.
                Err(e @ Error::Registry { .. }) if n > 1 => attempts.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoRegistryWorked {
            reference: reference.to_string(),
            attempts,
        })
    }

    fn client_for(&self, r: &ImageRef) -> oci_client::Client {
        let insecure = self.inner.conf.is_insecure(r);
        let protocol = if insecure {
            oci_client::client::ClientProtocol::HttpsExcept(vec![r.registry.clone()])
        } else {
            oci_client::client::ClientProtocol::Https
        };
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol,
            accept_invalid_certificates: insecure && !r.is_loopback_registry(),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        })
    }

    async fn pull_one(&self, r: &ImageRef, progress: &dyn Progress) -> Result<(Image, Lease)> {
        let name = r.canonical();
        let reg_err = |e: &dyn std::fmt::Display| Error::Registry {
            reference: name.clone(),
            registry: r.registry.clone(),
            reason: e.to_string(),
        };
        if self.inner.conf.is_blocked(r) {
            return Err(Error::UnsupportedManifest {
                reference: name.clone(),
                reason: format!("registry {} is blocked in registries.conf", r.registry),
            });
        }
        let client = self.client_for(r);
        let creds = auth::lookup(&self.inner.opts.auth_files, r)?;
        let auth = match creds {
            Some(c) => oci_client::secrets::RegistryAuth::Basic(c.username, c.password),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let oref = r.to_oci();
        let (bytes, _) = client
            .pull_manifest_raw(&oref, &auth, manifest::ACCEPT)
            .await
            .map_err(|e| reg_err(&explain_manifest_error(r, &e)))?;
        let mut digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: format!("{name}: manifest"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let mut bytes = bytes.to_vec();
        let mut m = manifest::parse_manifest(&name, &bytes)?;
        if let Manifest::Index(entries) = &m {
            let (os, arch) = &self.inner.opts.platform;
            let chosen = manifest::choose_platform(&name, entries, os, arch)?.clone();
            let cref = oref.clone_with_digest(chosen.digest.clone());
            let (b, _) = client
                .pull_manifest_raw(&cref, &auth, manifest::ACCEPT)
                .await
                .map_err(|e| reg_err(&e))?;
            let actual = format!("sha256:{}", sha256_hex(&b));
            if actual != chosen.digest {
                return Err(Error::DigestMismatch {
                    what: format!("{name}: manifest for {os}/{arch}"),
                    expected: chosen.digest,
                    actual,
                });
            }
            bytes = b.to_vec();
            digest = actual;
            m = manifest::parse_manifest(&name, &bytes)?;
        }
        let Manifest::Image { config, layers } = m else {
            return Err(Error::UnsupportedManifest {
                reference: name,
                reason: "a manifest list points to another manifest list".into(),
            });
        };
        let source = Source::Registry {
            client: &client,
            oref: &oref,
        };
        self.install(&name, &digest, &bytes, &config, &layers, &source, progress)
            .await
    }

    /// Store manifest + config + layers and write the index record.
    #[allow(clippy::too_many_arguments)]
    async fn install(
        &self,
        name: &str,
        manifest_digest: &str,
        manifest_bytes: &[u8],
        config: &Descriptor,
        layers: &[Descriptor],
        source: &Source<'_>,
        progress: &dyn Progress,
    ) -> Result<(Image, Lease)> {
        // Pulls hold the GC lock shared so that eviction never removes a layer
        // between its unpacking and the record that references it.
        let gc = lock::shared_async(self.gc_lock_path()).await?;
        let config_path = self.ensure_blob(name, source, config, progress).await?;
        let config_bytes =
            fs::read(&config_path).ctx(|| format!("reading {}", config_path.display()))?;
        let (cfg, diff_ids) = manifest::parse_config(name, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::UnsupportedManifest {
                reference: name.to_string(),
                reason: format!(
                    "the manifest has {} layers but the config lists {} diff ids",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        // The futures are built before streaming them: a closure mapping
        // borrowed items to futures inside the stream makes the whole pull
        // future not provably `Send` (a rustc limitation with higher-ranked
        // lifetimes), and callers spawn it on a multi-threaded runtime.
        let fetches: Vec<_> = layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, d)| self.ensure_layer(name, source, l, d, progress))
            .collect();
        let records: Vec<LayerRecord> = futures_util::stream::iter(fetches)
            .buffered(self.inner.opts.max_concurrent_downloads.max(1))
            .try_collect()
            .await?;
        let mpath = self.blob_path(manifest_digest);
        if !mpath.exists() {
            write_atomic(&self.inner.scratch, self.next(), &mpath, manifest_bytes)?;
        }
        let now = now_ms();
        let rec = ImageRecord {
            name: name.to_string(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config.digest.clone(),
            size: records.iter().map(|l| l.unpacked_size).sum(),
            layers: records,
            pulled_at_ms: now,
            last_used_ms: now,
        };
        self.write_record(&rec)?;
        let image = self.image_from_record(&rec, Some(cfg))?;
        // Lease before letting eviction run again.
        let lease = self.lease(&image)?;
        drop(gc);
        progress.event(&ProgressEvent::ImageReady {
            image: name.to_string(),
            digest: manifest_digest.to_string(),
        });
        // Keep the store under its bound (never evicting what we just pulled).
        let total = self.total_bytes()?;
        if total > self.inner.opts.max_bytes {
            let this = self.clone();
            let keep = name.to_string();
            let max = self.inner.opts.max_bytes;
            let rep = tokio::task::spawn_blocking(move || this.prune_inner(max, Some(&keep)))
                .await
                .map_err(|e| Error::io("prune task", io::Error::other(e)))??;
            if !rep.removed.is_empty() {
                tracing::info!(removed = ?rep.removed, freed = rep.freed_bytes, "evicted images to stay under the size bound");
            }
        }
        Ok((image, lease))
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

    /// Fetch a blob to `dest` (a new file), verifying digest and size as it streams.
    async fn fetch(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        match source {
            Source::Local(files) => {
                let src = files.get(&desc.digest).ok_or_else(|| Error::Import {
                    path: PathBuf::from(image),
                    reason: format!("blob {} is missing from the archive", desc.digest),
                })?;
                let mut f = fs::File::open(src).ctx(|| format!("opening {}", src.display()))?;
                let mut out =
                    fs::File::create(dest).ctx(|| format!("creating {}", dest.display()))?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f
                        .read(&mut buf)
                        .ctx(|| format!("reading {}", src.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .ctx(|| format!("writing {}", dest.display()))?;
                }
                out.sync_all()
                    .ctx(|| format!("writing {}", dest.display()))?;
                let actual = format!("sha256:{}", hex::encode(h.finalize()));
                if actual != desc.digest {
                    return Err(Error::DigestMismatch {
                        what: format!("{image}: blob {}", desc.digest),
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                Ok(())
            }
            Source::Registry { client, oref } => {
                let mut out = tokio::fs::File::create(dest)
                    .await
                    .ctx(|| format!("creating {}", dest.display()))?;
                let what = dest.display().to_string();
                self.download(image, client, oref, desc, &mut out, &what, progress)
                    .await?;
                out.sync_all()
                    .await
                    .ctx(|| format!("writing {}", dest.display()))
            }
        }
    }

    /// Stream a blob from the registry into `out` (`what` names it in
    /// errors), counting its size and hashing it as it goes. Whatever went
    /// to `out` is only to be trusted once this returns `Ok`.
    #[allow(clippy::too_many_arguments)]
    async fn download<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        image: &str,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        desc: &Descriptor,
        out: &mut W,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mismatch = |actual: String| Error::DigestMismatch {
            what: format!("{image}: blob {}", desc.digest),
            expected: desc.digest.clone(),
            actual,
        };
        progress.event(&ProgressEvent::DownloadStarted {
            image: image.to_string(),
            digest: desc.digest.clone(),
            total: desc.size,
        });
        let reg_err = |e: &dyn std::fmt::Display| Error::Registry {
            reference: image.to_string(),
            registry: oref.registry().to_string(),
            reason: format!("blob {}: {e}", desc.digest),
        };
        let odesc = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let mut stream = client
            .pull_blob_stream(oref, &odesc)
            .await
            .map_err(|e| reg_err(&e))?;
        let mut h = Sha256::new();
        let mut done = 0u64;
        let mut stream_err = None;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    stream_err = Some(e);
                    break;
                }
            };
            done += chunk.len() as u64;
            if desc.size > 0 && done > desc.size {
                return Err(reg_err(&format!(
                    "the registry sent more than the {} bytes the manifest promised",
                    desc.size
                )));
            }
            h.update(&chunk);
            out.write_all(&chunk)
                .await
                .ctx(|| format!("writing {what}"))?;
            progress.event(&ProgressEvent::Downloaded {
                digest: desc.digest.clone(),
                done,
                total: desc.size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if let Some(e) = stream_err {
            // oci-client verifies too and fails the stream at its end; report
            // our own finding when the bytes are all there but wrong.
            if done == desc.size && actual != desc.digest {
                return Err(mismatch(actual));
            }
            return Err(reg_err(&e));
        }
        if actual != desc.digest {
            return Err(mismatch(actual));
        }
        out.flush().await.ctx(|| format!("writing {what}"))?;
        progress.event(&ProgressEvent::DownloadFinished {
            digest: desc.digest.clone(),
        });
        Ok(())
    }

    /// Keep a (small) blob in `blobs/sha256/`: configs and manifests.
    async fn ensure_blob(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        let path = self.blob_path(&desc.digest);
        if path.exists() {
            return Ok(path);
        }
        let _l = lock::exclusive_async(self.lock_path("b", &desc.digest)).await?;
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.inner.scratch.join(format!("blob-{}", self.next()));
        let mut guard = Cleanup {
            path: Some(tmp.clone()),
            unpacker: &*self.inner.opts.unpacker,
        };
        self.fetch(image, source, desc, &tmp, progress).await?;
        fs::rename(&tmp, &path).ctx(|| format!("renaming into {}", path.display()))?;
        guard.path = None;
        Ok(path)
    }

    fn layer_dir(&self, diff_id: &str) -> (String, PathBuf) {
        let rel = format!("l/{}", short_id(diff_id));
        let abs = self.inner.root.join(&rel);
        (rel, abs)
    }

    fn read_layer_meta(&self, diff_id: &str) -> Option<LayerMeta> {
        let (_, dir) = self.layer_dir(diff_id);
        let meta = dir.with_extension("json");
        let m: LayerMeta = serde_json::from_slice(&fs::read(meta).ok()?).ok()?;
        (m.diff_id == diff_id && dir.is_dir()).then_some(m)
    }

    /// Make sure the layer `diff_id` is unpacked in `l/`, downloading it if needed.
    async fn ensure_layer(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        diff_id: &str,
        progress: &dyn Progress,
    ) -> Result<LayerRecord> {
        let (rel, dir) = self.layer_dir(diff_id);
        let record = |unpacked_size| LayerRecord {
            digest: desc.digest.clone(),
            diff_id: diff_id.to_string(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            unpacked_size,
            dir: rel.clone(),
        };
        if let Some(m) = self.read_layer_meta(diff_id) {
            progress.event(&ProgressEvent::LayerCached {
                digest: desc.digest.clone(),
            });
            return Ok(record(m.unpacked_size));
        }
        let _l = lock::exclusive_async(self.lock_path("l", diff_id)).await?;
        if let Some(m) = self.read_layer_meta(diff_id) {
            progress.event(&ProgressEvent::LayerCached {
                digest: desc.digest.clone(),
            });
            return Ok(record(m.unpacked_size));
        }
        if dir.exists() {
            return Err(Error::io(
                format!(
                    "layer directory {} exists for another diff id (hash prefix collision) or without metadata; run prune",
                    dir.display()
                ),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let unpacker = &*self.inner.opts.unpacker;
        // The layer's bytes: a local blob (verified first), or a pipe that
        // the download feeds while the unpacker reads it.
        let (input, feed) = match source {
            Source::Local(files) => {
                let p = files
                    .get(&desc.digest)
                    .cloned()
                    .ok_or_else(|| Error::Import {
                        path: PathBuf::from(image),
                        reason: format!("layer {} is missing from the archive", desc.digest),
                    })?;
                let actual = tokio::task::spawn_blocking({
                    let p = p.clone();
                    move || -> io::Result<String> {
                        let mut f = fs::File::open(p)?;
                        let mut h = Sha256::new();
                        io::copy(&mut f, &mut h)?;
                        Ok(format!("sha256:{}", hex::encode(h.finalize())))
                    }
                })
                .await
                .map_err(|e| Error::io("hash task", io::Error::other(e)))?
                .ctx(|| format!("reading {}", p.display()))?;
                if actual != desc.digest {
                    return Err(Error::DigestMismatch {
                        what: format!("{image}: layer {}", p.display()),
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                let f = fs::File::open(&p).ctx(|| format!("opening {}", p.display()))?;
                (OwnedFd::from(f), None)
            }
            Source::Registry { client, oref } => {
                let (rx, tx) =
                    layer_pipe().ctx(|| "creating a pipe to the unpacker".to_string())?;
                (rx, Some((client, oref, tx)))
            }
        };
        // Unpack into scratch (never trusted), and rename it into place only
        // once the blob's digest and the diff id are verified.
        let scratch_dir = self.inner.scratch.join(format!("unpack-{}", self.next()));
        let mut dir_guard = Cleanup {
            path: Some(scratch_dir.clone()),
            unpacker,
        };
        let opts = UnpackOptions {
            image: image.to_string(),
            layer: desc.digest.clone(),
            expected_diff_id: Some(diff_id.to_string()),
            ownership: self.inner.opts.ownership,
        };
        let up = self.inner.opts.unpacker.clone();
        let media_type = desc.media_type.clone();
        let sd = scratch_dir.clone();
        let unpacking =
            tokio::task::spawn_blocking(move || up.unpack(input, &media_type, &sd, &opts));
        let fetched = match feed {
            Some((client, oref, tx)) => {
                let what = format!("layer {} to the unpacker", desc.digest);
                match tokio::net::unix::pipe::Sender::from_owned_fd(tx) {
                    Ok(mut tx) => {
                        self.download(image, client, oref, desc, &mut tx, &what, progress)
                            .await
                    }
                    Err(e) => Err(Error::io(format!("sending {what}"), e)),
                }
                // The pipe is closed here: the unpacker sees the end of the layer.
            }
            None => Ok(()),
        };
        // Always wait for the unpacker, so that the scratch is removed only
        // once nothing writes in it any more.
        let unpacked = unpacking
            .await
            .map_err(|e| Error::io("unpack task", io::Error::other(e)))?;
        let report = match (fetched, unpacked) {
            (Ok(()), Ok(report)) => report,
            // The download's verdict comes first: a wrong or cut blob makes
            // the unpacker fail too, for a less telling reason.
            (Err(e @ (Error::DigestMismatch { .. } | Error::Registry { .. })), _) => return Err(e),
            // The unpacker stopped (an unsafe entry, ...): the download then
            // fails with a broken pipe, which says less.
            (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        };
        if report.diff_id != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("{image}: uncompressed layer {}", desc.digest),
                expected: diff_id.to_string(),
                actual: report.diff_id,
            });
        }
        let meta = LayerMeta {
            diff_id: diff_id.to_string(),
            unpacked_size: report.bytes,
        };
        let data = serde_json::to_vec(&meta)
            .map_err(|e| Error::io("encoding layer meta", io::Error::other(e)))?;
        write_atomic(
            &self.inner.scratch,
            self.next(),
            &dir.with_extension("json"),
            &data,
        )?;
        fs::rename(&scratch_dir, &dir).ctx(|| format!("renaming layer into {}", dir.display()))?;
        dir_guard.path = None;
        progress.event(&ProgressEvent::LayerUnpacked {
            digest: desc.digest.clone(),
            bytes: report.bytes,
        });
        Ok(record(report.bytes))
    }

    // ---------------------------------------------------------------- index

    fn load_records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.inner.root.join("images");
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
        let candidates = self.inner.conf.resolve(reference)?;
        for c in &candidates {
            let name = c.canonical();
            if let Ok(b) = fs::read(self.record_path(&name)) {
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
            if let Some(r) = self
                .load_records()?
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

    /// An image already in the store (no network), by reference.
    pub fn get(&self, reference: &str) -> Result<Image> {
        let rec = self.find_record(reference)?;
        for l in &rec.layers {
            if !self.inner.root.join(&l.dir).is_dir() {
                return Err(Error::NotFound(rec.name.clone()));
            }
        }
        self.image_from_record(&rec, None)
    }

    fn leased_manifests(&self) -> Result<(BTreeSet<String>, BTreeSet<String>, Vec<Lock>)> {
        // Returns (leased manifest hexes, layer dirs they protect, locks of stale
        // lease files that the caller may delete while holding them).
        let dir = self.inner.root.join("leases");
        let mut leased = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        let mut stale = Vec::new();
        for e in fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            match Lock::try_exclusive(&e.path())? {
                Some(l) => stale.push(l),
                None => {
                    if let Ok(b) = fs::read(e.path()) {
                        if let Ok(v) = serde_json::from_slice::<Vec<String>>(&b) {
                            dirs.extend(v);
                        }
                    }
                    leased.insert(name);
                }
            }
        }
        Ok((leased, dirs, stale))
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
                last_used: UNIX_EPOCH + Duration::from_millis(r.last_used_ms),
            })
            .collect();
        v.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.name.cmp(&b.name)));
        Ok(v)
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

    /// Mark `image` in use until the returned guard is dropped: eviction and
    /// `prune` skip it (and its layers). Also counts as a use for LRU.
    pub fn lease(&self, image: &Image) -> Result<Lease> {
        let path = self
            .inner
            .root
            .join("leases")
            .join(hex_of(&image.manifest_digest));
        let dirs: Vec<String> = image
            .layers
            .iter()
            .filter_map(|p| p.strip_prefix(&self.inner.root).ok())
            .map(|p| p.display().to_string())
            .collect();
        let data = serde_json::to_vec(&dirs)
            .map_err(|e| Error::io("encoding lease", io::Error::other(e)))?;
        let lock = loop {
            if !path.exists() {
                // Never replace an existing lease file (that would drop others' flocks).
                let tmp = self.inner.scratch.join(format!("lease-{}", self.next()));
                fs::write(&tmp, &data).ctx(|| format!("writing {}", tmp.display()))?;
                let r = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
                }
            }
            let l = Lock::shared(&path)?;
            // prune may have deleted the file between our open and our lock.
            let held = l
                .file()
                .metadata()
                .ctx(|| format!("stat {}", path.display()))?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => break l,
                _ => continue,
            }
        };
        for l in &image.layers {
            if !l.is_dir() {
                return Err(Error::NotFound(image.name.clone()));
            }
        }
        if let Ok(mut rec) = self.find_record(&image.name) {
            rec.last_used_ms = now_ms();
            let _ = self.write_record(&rec);
        }
        Ok(Lease {
            _lock: lock,
            image: image.name.clone(),
        })
    }

    /// Evict least recently used, unleased images until the store holds at most
    /// `target_bytes`. A layer is deleted only when no remaining or leased image
    /// uses it. Layers and blobs no image references are always deleted.
    pub fn prune(&self, target_bytes: u64) -> Result<PruneReport> {
        self.prune_inner(target_bytes, None)
    }

    /// Remove an image by reference. Its layers and blobs are deleted unless
    /// another image or a lease still uses them. Fails with [`Error::InUse`]
    /// while the image is leased.
    pub fn remove(&self, reference: &str) -> Result<()> {
        {
            let _gc = Lock::exclusive(&self.gc_lock_path())?;
            let rec = self.find_record(reference)?;
            let (leased, _, _stale) = self.leased_manifests()?;
            if leased.contains(hex_of(&rec.manifest_digest)) {
                return Err(Error::InUse(rec.name));
            }
            fs::remove_file(self.record_path(&rec.name))
                .ctx(|| format!("removing record of {}", rec.name))?;
        }
        // Collect what no image references any more.
        self.prune_inner(u64::MAX, None).map(|_| ())
    }

    fn remove_layer(&self, rel: &str) -> Result<()> {
        let dir = self.inner.root.join(rel);
        let Some(id) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(());
        };
        let _l = Lock::exclusive(&self.inner.root.join("locks").join(format!("l-{id}.lock")))?;
        // Drop the metadata first, then move the tree out of `l/` atomically
        // so that a half-deleted layer is never taken as complete.
        let _ = fs::remove_file(dir.with_extension("json"));
        if dir.exists() {
            let graveyard = self.inner.scratch.join(format!("gc-{}", self.next()));
            fs::rename(&dir, &graveyard).ctx(|| format!("moving {} out", dir.display()))?;
            self.inner.opts.unpacker.remove_tree(&graveyard)?;
        }
        Ok(())
    }

    fn prune_inner(&self, target: u64, keep: Option<&str>) -> Result<PruneReport> {
        let _gc = Lock::exclusive(&self.gc_lock_path())?;
        let (leased, protected, stale) = self.leased_manifests()?;
        for l in &stale {
            let _ = fs::remove_file(l.path());
        }
        drop(stale);
        let mut recs = self.load_records()?;
        let mut report = PruneReport::default();

        let sizes_of = |recs: &[ImageRecord]| {
            let mut m = BTreeMap::new();
            for r in recs {
                for l in &r.layers {
                    m.insert(l.dir.clone(), l.unpacked_size);
                }
            }
            m
        };
        // Orphan layers (no record, no lease): from overwritten tags or crashes.
        let referenced = sizes_of(&recs);
        if let Ok(rd) = fs::read_dir(self.inner.root.join("l")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let rel = format!("l/{}", n.trim_end_matches(".json"));
                if !referenced.contains_key(&rel) && !protected.contains(&rel) {
                    self.remove_layer(&rel)?;
                }
            }
        }

        // Blobs (configs, manifests) no record references.
        if let Ok(rd) = fs::read_dir(self.inner.root.join("blobs/sha256")) {
            let used: BTreeSet<String> = recs
                .iter()
                .flat_map(|r| {
                    [
                        hex_of(&r.manifest_digest).to_string(),
                        hex_of(&r.config_digest).to_string(),
                    ]
                })
                .collect();
            for e in rd.flatten() {
                if !used.contains(&*e.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }

        recs.sort_by(|a, b| {
            a.last_used_ms
                .cmp(&b.last_used_ms)
                .then(a.name.cmp(&b.name))
        });
        let mut total: u64 = sizes_of(&recs).values().sum::<u64>() + self.blobs_bytes();
        let before = total;
        let mut i = 0;
        while total > target && i < recs.len() {
            let r = &recs[i];
            if keep == Some(r.name.as_str()) {
                i += 1;
                continue;
            }
            if leased.contains(hex_of(&r.manifest_digest)) {
                report.kept_in_use.push(r.name.clone());
                i += 1;
                continue;
            }
            let r = recs.remove(i);
            fs::remove_file(self.record_path(&r.name))
                .ctx(|| format!("removing record of {}", r.name))?;
            let still = sizes_of(&recs);
            for l in &r.layers {
                if !still.contains_key(&l.dir) && !protected.contains(&l.dir) {
                    self.remove_layer(&l.dir)?;
                }
            }
            for d in [&r.manifest_digest, &r.config_digest] {
                let used = recs
                    .iter()
                    .any(|o| o.manifest_digest == *d || o.config_digest == *d);
                if !used {
                    let _ = fs::remove_file(self.blob_path(d));
                }
            }
            total = still.values().sum::<u64>() + self.blobs_bytes();
            report.removed.push(r.name);
        }
        report.freed_bytes = before.saturating_sub(total);
        report.remaining_bytes = total;
        Ok(report)
    }
}

// -------------------------------------------------------------------- import

#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn import_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A path inside an archive directory, refusing `..` and absolute paths.
fn inside(root: &Path, rel: &str, archive: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(import_err(
            archive,
            format!("path {rel:?} leaves the archive"),
        ));
    }
    Ok(root.join(p))
}

fn file_sha256(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).ctx(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).ctx(|| format!("reading {}", p.display()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

impl Store {
    /// Import images without a registry, from an OCI image layout (a
    /// directory, or a tarball of one: `oci-archive`) or a `docker save`
    /// archive (directory or tarball, optionally gzip-compressed). Every blob is
    /// verified against its digest (for docker-save layers: against the
    /// config's diff ids).
    ///
    /// Names come from the archive (`RepoTags`; the
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotations, a bare tag there meaning `localhost/<file stem>:<tag>`),
    /// or from `name`, which is required when the archive names nothing and
    /// refused when it holds several images.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let meta = fs::metadata(path).map_err(|e| import_err(path, e.to_string()))?;
        let unpacker = &*self.inner.opts.unpacker;
        let mut guard = Cleanup {
            path: None,
            unpacker,
        };
        let dir = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let d = self.inner.scratch.join(format!("import-{}", self.next()));
            guard.path = Some(d.clone());
            let (src, dst) = (path.to_path_buf(), d.clone());
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let mut r = io::BufReader::new(fs::File::open(&src)?);
                let head = io::BufRead::fill_buf(&mut r)?.to_vec();
                let rd: Box<dyn Read> = match crate::unpack::detect_compression(&head) {
                    crate::unpack::Compression::Gzip => {
                        Box::new(flate2::bufread::MultiGzDecoder::new(r))
                    }
                    crate::unpack::Compression::Zstd => {
                        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
                    }
                    crate::unpack::Compression::None => Box::new(r),
                };
                fs::create_dir_all(&dst)?;
                // tar's own unpack refuses `..` and absolute paths.
                tar::Archive::new(rd).unpack(&dst)
            })
            .await
            .map_err(|e| Error::io("import task", io::Error::other(e)))?
            .map_err(|e| import_err(path, format!("not a readable tar archive: {e}")))?;
            d
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches(".tar").to_lowercase())
            .unwrap_or_else(|| "import".into());
        let stem: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .to_string();
        if dir.join("manifest.json").is_file() {
            self.import_docker_save(path, &dir, name, progress).await
        } else if dir.join("index.json").is_file() {
            self.import_oci_layout(path, &dir, name, &stem, progress)
                .await
        } else {
            Err(import_err(
                path,
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            ))
        }
    }

    fn qualify_name(&self, archive: &Path, n: &str) -> Result<String> {
        let c = self
            .inner
            .conf
            .resolve(n)
            .map_err(|e| import_err(archive, e.to_string()))?;
        Ok(c[0].canonical())
    }

    async fn import_oci_layout(
        &self,
        archive: &Path,
        dir: &Path,
        name: Option<&str>,
        stem: &str,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let blob = |d: &str| dir.join("blobs/sha256").join(hex_of(d));
        let read_verified = |d: &str| -> Result<Vec<u8>> {
            let p = blob(d);
            let b = fs::read(&p).map_err(|e| import_err(archive, format!("blob {d}: {e}")))?;
            let actual = format!("sha256:{}", sha256_hex(&b));
            if actual != d {
                return Err(Error::DigestMismatch {
                    what: format!("{}: blob {d}", archive.display()),
                    expected: d.to_string(),
                    actual,
                });
            }
            Ok(b)
        };
        let idx =
            fs::read(dir.join("index.json")).map_err(|e| import_err(archive, e.to_string()))?;
        let label = archive.display().to_string();
        let Manifest::Index(entries) = manifest::parse_manifest(&label, &idx)? else {
            return Err(import_err(archive, "index.json is not an image index"));
        };
        if entries.is_empty() {
            return Err(import_err(archive, "index.json lists no image"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(import_err(
                archive,
                format!(
                    "it holds {} images; a single name cannot be given to all",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in &entries {
            let ann = e.annotations.clone().unwrap_or_default();
            let n = match name {
                Some(n) => self.qualify_name(archive, n)?,
                None => match ann
                    .get("io.containerd.image.name")
                    .or_else(|| ann.get("org.opencontainers.image.ref.name"))
                {
                    Some(n) if n.contains(['/', ':', '@']) => self.qualify_name(archive, n)?,
                    Some(tag) => self.qualify_name(archive, &format!("localhost/{stem}:{tag}"))?,
                    None => {
                        return Err(import_err(
                            archive,
                            "the image has no name annotation; give it a name",
                        ))
                    }
                },
            };
            let mut mbytes = read_verified(&e.digest)?;
            let mut mdigest = e.digest.clone();
            let mut m = manifest::parse_manifest(&n, &mbytes)?;
            if let Manifest::Index(sub) = &m {
                let (os, arch) = &self.inner.opts.platform;
                let chosen = manifest::choose_platform(&n, sub, os, arch)?;
                mdigest = chosen.digest.clone();
                mbytes = read_verified(&mdigest)?;
                m = manifest::parse_manifest(&n, &mbytes)?;
            }
            let Manifest::Image { config, layers } = m else {
                return Err(import_err(
                    archive,
                    "nested image indexes are not supported",
                ));
            };
            let mut files = HashMap::new();
            for d in std::iter::once(&config).chain(layers.iter()) {
                files.insert(d.digest.clone(), blob(&d.digest));
            }
            out.push(
                self.install(
                    &n,
                    &mdigest,
                    &mbytes,
                    &config,
                    &layers,
                    &Source::Local(&files),
                    progress,
                )
                .await?
                .0,
            );
        }
        Ok(out)
    }

    async fn import_docker_save(
        &self,
        archive: &Path,
        dir: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let text =
            fs::read(dir.join("manifest.json")).map_err(|e| import_err(archive, e.to_string()))?;
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&text)
            .map_err(|e| import_err(archive, format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(import_err(archive, "manifest.json lists no image"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(import_err(
                archive,
                format!(
                    "it holds {} images; a single name cannot be given to all",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in entries {
            let names: Vec<String> = match name {
                Some(n) => vec![n.to_string()],
                None => e.repo_tags.clone().unwrap_or_default(),
            };
            if names.is_empty() {
                return Err(import_err(
                    archive,
                    "the image has no RepoTags; give it a name",
                ));
            }
            let cpath = inside(dir, &e.config, archive)?;
            let cbytes = fs::read(&cpath)
                .map_err(|err| import_err(archive, format!("{}: {err}", e.config)))?;
            let cdigest = format!("sha256:{}", sha256_hex(&cbytes));
            let (_, diff_ids) = manifest::parse_config(&archive.display().to_string(), &cbytes)?;
            if diff_ids.len() != e.layers.len() {
                return Err(import_err(
                    archive,
                    "config diff_ids and Layers differ in number",
                ));
            }
            let mut files = HashMap::new();
            files.insert(cdigest.clone(), cpath);
            let mut layers = Vec::new();
            for (l, diff_id) in e.layers.iter().zip(&diff_ids) {
                let p = inside(dir, l, archive)?;
                let mut head = [0u8; 4];
                let n = fs::File::open(&p)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(|err| import_err(archive, format!("{l}: {err}")))?;
                let comp = crate::unpack::detect_compression(&head[..n]);
                // An uncompressed layer's digest is its diff id (checked while hashing).
                let digest = if comp == crate::unpack::Compression::None {
                    diff_id.clone()
                } else {
                    file_sha256(&p)?
                };
                let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                files.insert(digest.clone(), p);
                layers.push(Descriptor {
                    media_type: String::new(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            let config = Descriptor {
                media_type: "application/vnd.docker.container.image.v1+json".into(),
                digest: cdigest,
                size: cbytes.len() as u64,
                platform: None,
                annotations: None,
            };
            // Synthesise a manifest so the record looks like a pulled image.
            let mbytes = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": manifest::OCI_MANIFEST.replace("manifest", "config"), "digest": config.digest, "size": config.size},
                "layers": layers.iter().map(|l| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            }))
            .map_err(|err| Error::io("encoding manifest", io::Error::other(err)))?;
            let mdigest = format!("sha256:{}", sha256_hex(&mbytes));
            for n in names {
                let n = self.qualify_name(archive, &n)?;
                out.push(
                    self.install(
                        &n,
                        &mdigest,
                        &mbytes,
                        &config,
                        &layers,
                        &Source::Local(&files),
                        progress,
                    )
                    .await?
                    .0,
                );
            }
        }
        Ok(out)
    }
}

/// What a failed manifest GET means for the user, and what to do.
fn explain_manifest_error(r: &ImageRef, e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let what = match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}@{d}", r.repository),
        (Some(t), None) => format!("{}:{t}", r.repository),
        (None, None) => r.repository.clone(),
    };
    let codes: Vec<&C> = match e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().map(|e| &e.code).collect(),
        _ => Vec::new(),
    };
    let has = |c: &[C]| codes.iter().any(|x| c.contains(x));
    if matches!(e, E::ImageManifestNotFoundError(_)) || has(&[C::ManifestUnknown, C::NotFound]) {
        format!(
            "image not found: {} has no {what} (manifest unknown); check the name and the tag",
            r.registry
        )
    } else if has(&[C::NameUnknown, C::NameInvalid]) {
        format!(
            "repository not found: {} has no repository {}; check the name",
            r.registry, r.repository
        )
    } else if matches!(e, E::UnauthorizedError { .. } | E::AuthenticationFailure(_))
        || has(&[C::Unauthorized, C::Denied])
    {
        format!(
            "access denied to {what} ({e}); the image does not exist or needs credentials: \
             add them to an auth file (e.g. ~/.docker/config.json or $REGISTRY_AUTH_FILE)"
        )
    } else if let E::RequestError(re) = e {
        format!(
            "cannot reach {} ({re}); check the address and the network",
            r.registry
        )
    } else {
        e.to_string()
    }
}
