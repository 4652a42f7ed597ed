//! Unit tests of the bundle cache.

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
                Ok::<_, String>(md5_hex(&me.body))
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
    assert!(matches!(err, CacheError::Download(ref m) if m.message == "HTTP 404"));
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
    let held = FileLock::exclusive_current(&lock_path(cache.dir(), &key)).unwrap();
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
