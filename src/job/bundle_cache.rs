//! The dataset cache: `input_data` and `reference_data` zips kept across
//! jobs, as the Python worker does (codabench-protocol.md §3.4), but
//! validated, crash-safe, shared safely between slots and processes, and
//! bounded by evicting the least recently used entries rather than wiping
//! everything.
//!
//! Layout of the cache directory (`<HOST_DIRECTORY>/cache`), one entry per
//! key, the key being the sha256 hex of the URL without its query string
//! (presigned signatures change on every task):
//!
//! * `<key>.zip`: the bundle as downloaded;
//! * `<key>.json`: its sidecar: size, md5, last use (see [`Sidecar`]);
//! * `<key>.lock`: flock(2) target. Exclusive while the entry is checked,
//!   downloaded or evicted; shared while a job extracts from it, so
//!   eviction (which only ever tries a non-blocking exclusive lock) never
//!   removes an entry in use;
//! * `<key>.tmp-*`: a download in progress, renamed to `<key>.zip` once
//!   complete; left-overs of a crash are removed by the next eviction.
//!
//! An entry is trusted only if its sidecar reads, the zip's size matches
//! it and the zip's central directory reads. The zip is renamed into place
//! before the sidecar is written, so a crash at any point leaves either a
//! complete entry or one that fails the check and is downloaded again.
//! Damage the cheap check cannot see (a flipped byte inside a member) is
//! caught by the CRC check when extracting; the caller then
//! [`invalidate`](BundleCache::invalidate)s the entry and fetches again.

use super::step::FetchError;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rootfs_cache::lock::FileLock;
use serde::{Deserialize, Serialize};

/// `MAX_CACHE_DIR_SIZE_GB`'s default, as in the Python worker.
pub const DEFAULT_MAX_GB: f64 = 10.0;

/// The cache bound in bytes from a `MAX_CACHE_DIR_SIZE_GB` value: a float
/// in decimal GB (as the HEAD Python worker reads it); unset, empty,
/// negative or unparsable means the default, 10 GB.
pub fn max_bytes_from_gb(value: Option<&str>) -> u64 {
    let gb = value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|g| g.is_finite() && *g >= 0.0)
        .unwrap_or(DEFAULT_MAX_GB);
    (gb * 1e9) as u64
}

/// The cache key of a bundle URL: sha256 hex of the URL without its query
/// string, as the Python worker computes it (`sha256(url.split("?")[0])`).
pub fn cache_key(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    hex::encode(sha256(base.as_bytes()))
}

/// What is known about one cached zip, in `<key>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The URL without its query string (for people reading the cache).
    pub url: String,
    /// Size of `<key>.zip` in bytes.
    pub size: u64,
    /// Hex MD5 of the zip, as computed while downloading it.
    pub md5: String,
    /// Last use, in milliseconds since the Unix epoch.
    pub last_used_ms: u64,
}

/// Why [`BundleCache::get_or_fetch`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The download itself failed (its message, unchanged).
    #[error("{0}")]
    Download(FetchError),
    /// The cache directory could not be used.
    #[error("bundle cache: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let what = what.into();
    move |source| CacheError::Io { what, source }
}

/// A cached zip held for reading: while it lives, a shared lock keeps the
/// entry from being evicted or replaced.
#[derive(Debug)]
pub struct Lease {
    key: String,
    zip: PathBuf,
    md5: String,
    size: u64,
    hit: bool,
    _lock: FileLock,
}

impl Lease {
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The cached zip.
    pub fn path(&self) -> &Path {
        &self.zip
    }
    pub fn md5(&self) -> &str {
        &self.md5
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Whether the entry was already cached (no download was made).
    pub fn hit(&self) -> bool {
        self.hit
    }
}

/// The bundle cache in one directory, bounded to `max_bytes` of zips.
#[derive(Debug)]
pub struct BundleCache {
    dir: PathBuf,
    max_bytes: u64,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl BundleCache {
    /// Open (creating) the cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<BundleCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(BundleCache { dir, max_bytes })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }

    /// The cached zip of `url`, downloading it with `download` on a miss.
    ///
    /// `download` gets a temporary path inside the cache directory, must
    /// write the whole zip there and return its hex MD5. Concurrent calls
    /// for the same URL (from this process or another) download once: the
    /// others wait on the entry's lock and then find it cached.
    pub async fn get_or_fetch<F, Fut, E>(&self, url: &str, download: F) -> Result<Lease, CacheError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: Into<FetchError>,
    {
        let key = cache_key(url);
        let base = url.split('?').next().unwrap_or(url).to_string();
        let mut download = Some(download);
        // A few rounds: an eviction can slip in between our exclusive and
        // shared locks (flock conversion is not atomic); we then start over.
        for _ in 0..5 {
            let (dir, k) = (self.dir.clone(), key.clone());
            let (lock, found) = blocking(move || {
                let lock = FileLock::exclusive_current(&lock_path(&dir, &k))?;
                let found = check_entry(&dir, &k);
                Ok::<_, io::Error>((lock, found))
            })
            .await
            .map_err(io_err(format!("locking entry {key}")))?;

            let hit = match found {
                Some(_) => true,
                None => {
                    let Some(download) = download.take() else {
                        // Downloaded already, and gone again before we
                        // could hold it: give up rather than loop.
                        return Err(CacheError::Io {
                            what: format!("entry {key}"),
                            source: io::Error::other("evicted while being stored"),
                        });
                    };
                    self.discard_files(&key);
                    let tmp = self.path(
                        &key,
                        &format!(
                            "tmp-{}-{}",
                            std::process::id(),
                            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
                        ),
                    );
                    let md5 = match download(tmp.clone()).await {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(CacheError::Download(e.into()));
                        }
                    };
                    let (dir, k, b) = (self.dir.clone(), key.clone(), base.clone());
                    blocking(move || commit(&dir, &k, &tmp, &b, md5))
                        .await
                        .map_err(io_err(format!("storing entry {key}")))?;
                    false
                }
            };

            // Downgrade to shared, then make sure nobody evicted the entry
            // in between.
            let (dir, k) = (self.dir.clone(), key.clone());
            let held = blocking(move || {
                lock.to_shared()?;
                if !lock.is_current()? {
                    return Ok(None);
                }
                match check_entry(&dir, &k) {
                    Some(mut s) => {
                        s.last_used_ms = now_ms();
                        // Best effort: a failed touch only ages the entry.
                        let _ = write_sidecar(&dir, &k, &s);
                        Ok(Some((lock, s)))
                    }
                    None => Ok(None),
                }
            })
            .await
            .map_err(io_err(format!("locking entry {key}")))?;
            let Some((lock, s)) = held else { continue };

            if hit {
                tracing::info!(key = %key, bytes = s.size, "bundle cache hit: {base}");
            }
            let lease = Lease {
                zip: self.path(&key, "zip"),
                key: key.clone(),
                md5: s.md5,
                size: s.size,
                hit,
                _lock: lock,
            };
            self.evict_async().await;
            return Ok(lease);
        }
        Err(CacheError::Io {
            what: format!("entry {key}"),
            source: io::Error::other("kept being evicted while being opened"),
        })
    }

    /// Drop a held entry that turned out to be damaged (extraction failed),
    /// so that the next [`get_or_fetch`](Self::get_or_fetch) downloads it
    /// again.
    pub async fn invalidate(&self, lease: Lease) {
        let Lease { key, _lock, .. } = lease;
        let dir = self.dir.clone();
        let _ = blocking(move || {
            // Upgrade: wait for other readers (they would fail as well).
            _lock.to_exclusive()?;
            if _lock.is_current()? {
                tracing::warn!(key = %key, "discarding a damaged bundle cache entry");
                remove_entry(&dir, &key);
            }
            Ok::<_, io::Error>(())
        })
        .await;
    }

    fn discard_files(&self, key: &str) {
        for ext in ["json", "zip"] {
            let _ = std::fs::remove_file(self.path(key, ext));
        }
    }

    async fn evict_async(&self) {
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        match blocking(move || evict(&dir, max)).await {
            Ok(n) if n > 0 => tracing::info!(evicted = n, "bundle cache over its bound"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "bundle cache eviction failed"),
        }
    }

    /// Remove least recently used entries until the zips fit in the bound,
    /// skipping entries in use; also removes left-over temporary files and
    /// incomplete entries. Returns how many entries were removed.
    pub fn evict(&self) -> io::Result<usize> {
        evict(&self.dir, self.max_bytes)
    }

    /// Remove entry `key` unless a job holds it (never waits). Returns the
    /// bytes its zip held, `None` when it is in use.
    pub fn remove_unused(&self, key: &str) -> io::Result<Option<u64>> {
        let Some(_lock) = FileLock::try_exclusive_current(&lock_path(&self.dir, key))? else {
            return Ok(None);
        };
        let bytes = std::fs::metadata(self.dir.join(format!("{key}.zip")))
            .map(|m| m.len())
            .unwrap_or(0);
        remove_entry(&self.dir, key);
        Ok(Some(bytes))
    }

    /// Total bytes of the cached zips.
    pub fn total_bytes(&self) -> io::Result<u64> {
        Ok(scan(&self.dir)?.iter().map(|e| e.bytes).sum())
    }

    /// The entries' sidecars (complete entries only), least recently used
    /// first.
    pub fn entries(&self) -> io::Result<Vec<(String, Sidecar)>> {
        let mut v: Vec<_> = scan(&self.dir)?
            .into_iter()
            .filter_map(|e| e.sidecar.map(|s| (e.key, s)))
            .collect();
        v.sort_by_key(|(_, s)| s.last_used_ms);
        Ok(v)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `<key>.lock`. Eviction removes lock files while holding them, so they
/// are locked with [`FileLock::exclusive_current`] (or its `try_`), which
/// starts over when the path no longer names the file it locked.
fn lock_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.lock"))
}

fn read_sidecar(dir: &Path, key: &str) -> Option<Sidecar> {
    let bytes = std::fs::read(dir.join(format!("{key}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write `<key>.json` atomically (temp file, then rename).
fn write_sidecar(dir: &Path, key: &str, s: &Sidecar) -> io::Result<()> {
    let tmp = dir.join(format!(
        "{key}.tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(s).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{key}.json")))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The entry's sidecar if the entry can be trusted: the sidecar reads,
/// the zip has the recorded size and its central directory reads.
fn check_entry(dir: &Path, key: &str) -> Option<Sidecar> {
    let s = read_sidecar(dir, key)?;
    let zip = dir.join(format!("{key}.zip"));
    let f = File::open(&zip).ok()?;
    if f.metadata().ok()?.len() != s.size {
        tracing::warn!(
            key,
            "bundle cache entry has the wrong size; fetching it again"
        );
        return None;
    }
    if let Err(e) = zip::ZipArchive::new(f) {
        tracing::warn!(key, error = %e, "bundle cache entry is not a readable zip; fetching it again");
        return None;
    }
    Some(s)
}

/// Move a complete download into place, then write its sidecar.
fn commit(dir: &Path, key: &str, tmp: &Path, url: &str, md5: String) -> io::Result<Sidecar> {
    let res = (|| {
        let f = File::open(tmp)?;
        f.sync_all()?;
        let size = f.metadata()?.len();
        std::fs::rename(tmp, dir.join(format!("{key}.zip")))?;
        let s = Sidecar {
            url: url.to_string(),
            size,
            md5,
            last_used_ms: now_ms(),
        };
        write_sidecar(dir, key, &s)?;
        // Make the renames durable before anyone relies on them.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(s)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res
}

/// Remove an entry's files; the caller holds its exclusive lock.
fn remove_entry(dir: &Path, key: &str) {
    for ext in ["json", "zip", "lock"] {
        let _ = std::fs::remove_file(dir.join(format!("{key}.{ext}")));
    }
}

/// What [`scan`] finds for one key.
struct Found {
    key: String,
    sidecar: Option<Sidecar>,
    has_zip: bool,
    /// Bytes of `<key>.zip` (0 if none).
    bytes: u64,
    /// Temporary files of this key.
    tmps: Vec<PathBuf>,
    /// Modification time of the zip, for entries with no sidecar.
    mtime_ms: u64,
}

impl Found {
    fn last_used(&self) -> u64 {
        self.sidecar
            .as_ref()
            .map(|s| s.last_used_ms)
            .unwrap_or(self.mtime_ms)
    }
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every key with a file in the cache directory.
fn scan(dir: &Path) -> io::Result<Vec<Found>> {
    let mut by_key: std::collections::BTreeMap<String, Found> = Default::default();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((key, ext)) = name.split_once('.') else {
            continue;
        };
        if !is_key(key) {
            continue;
        }
        let f = by_key.entry(key.to_string()).or_insert_with(|| Found {
            key: key.to_string(),
            sidecar: None,
            has_zip: false,
            bytes: 0,
            tmps: Vec::new(),
            mtime_ms: 0,
        });
        match ext {
            "zip" => {
                f.has_zip = true;
                if let Ok(m) = e.metadata() {
                    f.bytes = m.len();
                    f.mtime_ms = (m.mtime().max(0) as u64) * 1000;
                }
            }
            "json" => f.sidecar = read_sidecar(dir, key),
            t if t.starts_with("tmp-") => f.tmps.push(e.path()),
            _ => {}
        }
    }
    Ok(by_key.into_values().collect())
}

fn evict(dir: &Path, max_bytes: u64) -> io::Result<usize> {
    let mut found = scan(dir)?;
    // Left-overs first, for keys nobody holds: temporary files of
    // interrupted downloads, a zip or a sidecar without the other (an
    // interrupted store), a lone lock file.
    let mut removed = 0;
    for f in &mut found {
        let incomplete = f.has_zip != f.sidecar.is_some();
        let lone_lock = !f.has_zip && f.sidecar.is_none();
        if f.tmps.is_empty() && !incomplete && !lone_lock {
            continue;
        }
        let Ok(Some(_lock)) = FileLock::try_exclusive_current(&lock_path(dir, &f.key)) else {
            continue;
        };
        for t in f.tmps.drain(..) {
            let _ = std::fs::remove_file(t);
        }
        // Look again under the lock: the entry may have been completed.
        let has_zip = dir.join(format!("{}.zip", f.key)).exists();
        let has_sidecar = read_sidecar(dir, &f.key).is_some();
        if has_zip != has_sidecar || (!has_zip && !has_sidecar) {
            if has_zip {
                removed += 1;
            }
            remove_entry(dir, &f.key);
            f.bytes = 0;
        }
    }
    let mut total: u64 = found.iter().map(|f| f.bytes).sum();
    if total <= max_bytes {
        return Ok(removed);
    }
    found.retain(|f| f.bytes > 0);
    found.sort_by_key(Found::last_used);
    for f in &found {
        if total <= max_bytes {
            break;
        }
        // Never wait: an entry locked is being fetched or extracted.
        let Ok(Some(_lock)) = FileLock::try_exclusive_current(&lock_path(dir, &f.key)) else {
            continue;
        };
        let bytes = std::fs::metadata(dir.join(format!("{}.zip", f.key)))
            .map(|m| m.len())
            .unwrap_or(0);
        remove_entry(dir, &f.key);
        total = total.saturating_sub(bytes.max(f.bytes));
        removed += 1;
        tracing::info!(key = %f.key, bytes, "evicted from the bundle cache");
    }
    Ok(removed)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests;
