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

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    Download(String),
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
    _lock: File,
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
    pub async fn get_or_fetch<F, Fut>(&self, url: &str, download: F) -> Result<Lease, CacheError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        let key = cache_key(url);
        let base = url.split('?').next().unwrap_or(url).to_string();
        let mut download = Some(download);
        // A few rounds: an eviction can slip in between our exclusive and
        // shared locks (flock conversion is not atomic); we then start over.
        for _ in 0..5 {
            let (dir, k) = (self.dir.clone(), key.clone());
            let (lock, found) = blocking(move || {
                let lock = lock_key(&dir, &k, libc::LOCK_EX)?;
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
                            return Err(CacheError::Download(e));
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
                flock(&lock, libc::LOCK_SH)?;
                if !same_file(&lock, &dir.join(format!("{k}.lock")))? {
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
            flock(&_lock, libc::LOCK_EX)?;
            if same_file(&_lock, &dir.join(format!("{key}.lock")))? {
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

/// flock(2), retried on EINTR.
fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only acts on the given open fd.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether the open `f` is still the file at `path`.
fn same_file(f: &File, path: &Path) -> io::Result<bool> {
    let open = f.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.ino() == open.ino() && m.dev() == open.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lock `<key>.lock` with `op` (which may include `LOCK_NB`). Eviction
/// removes lock files while holding them, so after locking we check the
/// path still names the file we locked, and start over if not.
fn lock_key(dir: &Path, key: &str, op: libc::c_int) -> io::Result<File> {
    let path = dir.join(format!("{key}.lock"));
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        flock(&f, op)?;
        if same_file(&f, &path)? {
            return Ok(f);
        }
    }
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
        let Ok(_lock) = lock_key(dir, &f.key, libc::LOCK_EX | libc::LOCK_NB) else {
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
        let Ok(_lock) = lock_key(dir, &f.key, libc::LOCK_EX | libc::LOCK_NB) else {
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
mod tests {
    use super::*;

    /// The cached URLs, least recently used first.
    fn urls_in(cache: &BundleCache) -> Vec<String> {
        cache
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.1.url)
            .collect()
    }
    use std::io::Read;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn zip_bytes(name: &str, content: &[u8]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(content).unwrap();
        w.finish().unwrap().into_inner()
    }

    fn md5_hex(b: &[u8]) -> String {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(b))
    }

    /// A fake site: serves `body` and counts downloads.
    #[derive(Clone)]
    struct Origin {
        body: Vec<u8>,
        count: Arc<AtomicUsize>,
    }

    impl Origin {
        fn new(body: Vec<u8>) -> Origin {
            Origin {
                body,
                count: Arc::default(),
            }
        }
        fn count(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }
        async fn fetch(&self, cache: &BundleCache, url: &str) -> Lease {
            let me = self.clone();
            cache
                .get_or_fetch(url, move |tmp| async move {
                    me.count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    std::fs::write(&tmp, &me.body).map_err(|e| e.to_string())?;
                    Ok(md5_hex(&me.body))
                })
                .await
                .unwrap()
        }
    }

    fn read(p: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(p).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    fn set_last_used(cache: &BundleCache, url: &str, ms: u64) {
        let key = cache_key(url);
        let mut s = read_sidecar(cache.dir(), &key).unwrap();
        s.last_used_ms = ms;
        write_sidecar(cache.dir(), &key, &s).unwrap();
    }

    #[test]
    fn key_ignores_the_query_string() {
        let a = cache_key("https://s3/bucket/data.zip?X-Amz-Signature=1&X-Amz-Date=2");
        assert_eq!(a, cache_key("https://s3/bucket/data.zip?X-Amz-Signature=3"));
        assert_eq!(a, cache_key("https://s3/bucket/data.zip"));
        assert_eq!(a, hex::encode(sha256(b"https://s3/bucket/data.zip")));
        assert_ne!(
            a,
            cache_key("https://s3/bucket/other.zip?X-Amz-Signature=1")
        );
    }

    #[test]
    fn bound_from_the_environment_value() {
        assert_eq!(max_bytes_from_gb(None), 10_000_000_000);
        assert_eq!(max_bytes_from_gb(Some("")), 10_000_000_000);
        assert_eq!(max_bytes_from_gb(Some("junk")), 10_000_000_000);
        assert_eq!(max_bytes_from_gb(Some("-1")), 10_000_000_000);
        assert_eq!(max_bytes_from_gb(Some(" 2.5 ")), 2_500_000_000);
        assert_eq!(max_bytes_from_gb(Some("0")), 0);
    }

    #[tokio::test]
    async fn miss_then_hit() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap();
        let body = zip_bytes("a.txt", b"hello");
        let origin = Origin::new(body.clone());

        let first = origin.fetch(&cache, "http://site/a.zip?sig=1").await;
        assert!(!first.hit());
        assert_eq!(first.md5(), md5_hex(&body));
        assert_eq!(first.size(), body.len() as u64);
        assert_eq!(read(first.path()), body);
        drop(first);

        let second = origin.fetch(&cache, "http://site/a.zip?sig=2").await;
        assert!(second.hit());
        assert_eq!(second.md5(), md5_hex(&body));
        assert_eq!(read(second.path()), body);
        assert_eq!(origin.count(), 1);

        let entries = cache.entries().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].1.url, "http://site/a.zip");
        // Nothing but the entry's own files is left in the directory.
        let mut names: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let key = cache_key("http://site/a.zip");
        assert_eq!(
            names,
            [
                format!("{key}.json"),
                format!("{key}.lock"),
                format!("{key}.zip")
            ]
        );
    }

    #[tokio::test]
    async fn corrupt_or_half_written_entries_are_downloaded_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::new(tmp.path(), 1 << 30).unwrap();
        let body = zip_bytes("a.txt", b"hello hello hello");
        let origin = Origin::new(body.clone());
        let url = "http://site/a.zip?sig=1";
        let key = cache_key(url);
        let zip = cache.dir().join(format!("{key}.zip"));
        drop(origin.fetch(&cache, url).await);

        // Same size, garbage content: the central directory does not read.
        std::fs::write(&zip, vec![0u8; body.len()]).unwrap();
        let l = origin.fetch(&cache, url).await;
        assert!(!l.hit());
        assert_eq!(read(l.path()), body);
        drop(l);
        assert_eq!(origin.count(), 2);

        // Truncated: the size does not match the sidecar.
        std::fs::write(&zip, &body[..body.len() - 5]).unwrap();
        assert!(!origin.fetch(&cache, url).await.hit());
        assert_eq!(origin.count(), 3);

        // A crash between renaming the zip and writing the sidecar.
        std::fs::remove_file(cache.dir().join(format!("{key}.json"))).unwrap();
        assert!(!origin.fetch(&cache, url).await.hit());
        assert_eq!(origin.count(), 4);

        // A garbage sidecar.
        std::fs::write(cache.dir().join(format!("{key}.json")), b"{not json").unwrap();
        assert!(!origin.fetch(&cache, url).await.hit());
        assert_eq!(origin.count(), 5);

        // Intact again.
        assert!(origin.fetch(&cache, url).await.hit());
        assert_eq!(origin.count(), 5);
    }

    #[tokio::test]
    async fn invalidate_forces_a_new_download() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::new(tmp.path(), 1 << 30).unwrap();
        let origin = Origin::new(zip_bytes("a.txt", b"x"));
        let url = "http://site/a.zip";
        drop(origin.fetch(&cache, url).await);
        let l = origin.fetch(&cache, url).await;
        assert!(l.hit());
        cache.invalidate(l).await;
        assert!(cache.entries().unwrap().is_empty());
        assert!(!origin.fetch(&cache, url).await.hit());
        assert_eq!(origin.count(), 2);
    }

    #[tokio::test]
    async fn failed_download_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::new(tmp.path(), 1 << 30).unwrap();
        let err = cache
            .get_or_fetch("http://site/a.zip?s=1", |tmp| async move {
                std::fs::write(&tmp, b"partial").unwrap();
                Err::<String, _>("HTTP 404".to_string())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Download(ref m) if m == "HTTP 404"));
        assert_eq!(cache.total_bytes().unwrap(), 0);
        cache.evict().unwrap();
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::new(tmp.path(), 1 << 30).unwrap();
        let key = cache_key("http://site/a.zip");
        let stale = cache.dir().join(format!("{key}.tmp-1-1"));
        std::fs::write(&stale, b"half a download").unwrap();
        // Held by someone (a download in progress): kept.
        let held = lock_key(cache.dir(), &key, libc::LOCK_EX).unwrap();
        cache.evict().unwrap();
        assert!(stale.exists());
        drop(held);
        cache.evict().unwrap();
        assert!(!stale.exists());
    }

    #[tokio::test]
    async fn concurrent_fetches_download_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Arc::new(BundleCache::new(tmp.path(), 1 << 30).unwrap());
        let body = zip_bytes("a.txt", b"shared");
        let origin = Origin::new(body.clone());
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (cache, origin) = (cache.clone(), origin.clone());
            tasks.push(tokio::spawn(async move {
                let l = origin
                    .fetch(&cache, &format!("http://site/a.zip?sig={i}"))
                    .await;
                (l.hit(), read(l.path()))
            }));
        }
        let mut hits = 0;
        for t in tasks {
            let (hit, bytes) = t.await.unwrap();
            hits += hit as usize;
            assert_eq!(bytes, body);
        }
        assert_eq!(origin.count(), 1);
        assert_eq!(hits, 3);
    }

    #[tokio::test]
    async fn eviction_removes_least_recently_used_first() {
        let tmp = tempfile::tempdir().unwrap();
        let bodies: Vec<Vec<u8>> = (0..4)
            .map(|i| zip_bytes("f", format!("entry {i}").as_bytes()))
            .collect();
        let size = bodies[0].len() as u64;
        assert!(bodies.iter().all(|b| b.len() as u64 == size));
        // Room for three entries.
        let cache = BundleCache::new(tmp.path(), 3 * size).unwrap();
        let urls: Vec<String> = (0..4).map(|i| format!("http://site/{i}.zip")).collect();
        let origins: Vec<Origin> = bodies.iter().cloned().map(Origin::new).collect();
        for i in 0..3 {
            drop(origins[i].fetch(&cache, &urls[i]).await);
        }
        // Use order, oldest first: 1, 2, 0.
        set_last_used(&cache, &urls[1], 1_000);
        set_last_used(&cache, &urls[2], 2_000);
        set_last_used(&cache, &urls[0], 3_000);

        drop(origins[3].fetch(&cache, &urls[3]).await);
        let left: Vec<String> = urls_in(&cache);
        assert_eq!(left, [urls[2].clone(), urls[0].clone(), urls[3].clone()]);
        assert_eq!(cache.total_bytes().unwrap(), 3 * size);

        // A hit refreshes the entry: 2 is now the most recent, 0 the oldest.
        assert!(origins[2].fetch(&cache, &urls[2]).await.hit());
        drop(origins[1].fetch(&cache, &urls[1]).await);
        let left: Vec<String> = urls_in(&cache);
        assert_eq!(left, [urls[3].clone(), urls[2].clone(), urls[1].clone()]);
        assert_eq!(origins[1].count(), 2);
    }

    #[tokio::test]
    async fn size_bound_spares_entries_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let a = zip_bytes("a", &[b'a'; 1000]);
        let b = zip_bytes("b", &[b'b'; 1000]);
        // Room for one of them only.
        let cache = BundleCache::new(tmp.path(), a.len() as u64 + 10).unwrap();
        let (oa, ob) = (Origin::new(a.clone()), Origin::new(b.clone()));

        let held = oa.fetch(&cache, "http://site/a.zip").await;
        set_last_used(&cache, "http://site/a.zip", 1);
        // `a` is older but being extracted: it stays, over the bound.
        let lb = ob.fetch(&cache, "http://site/b.zip").await;
        assert_eq!(read(held.path()), a);
        assert_eq!(cache.entries().unwrap().len(), 2);
        drop(lb);
        drop(held);
        // Once free, the next eviction brings the cache within the bound,
        // dropping the least recently used one.
        assert_eq!(cache.evict().unwrap(), 1);
        assert!(cache.total_bytes().unwrap() <= cache.max_bytes());
        let left: Vec<String> = urls_in(&cache);
        assert_eq!(left, ["http://site/b.zip"]);

        // A bound of zero keeps nothing that is not in use.
        let none = BundleCache::new(tmp.path(), 0).unwrap();
        none.evict().unwrap();
        assert_eq!(none.total_bytes().unwrap(), 0);
        assert_eq!(std::fs::read_dir(none.dir()).unwrap().count(), 0);
    }
}
