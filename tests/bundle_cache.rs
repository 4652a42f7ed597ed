//! The dataset cache through `SiteReporter::fetch`, against the fake
//! Codabench site (tests/support/site.rs): presigned URLs that change on
//! every task still hit, damaged entries are fetched again, only
//! `input_data` and `reference_data` are cached.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use compute_worker::job::bundle::UnzipLimits;
use compute_worker::job::bundle_cache::{cache_key, BundleCache};
use compute_worker::job::lifecycle::{Reporter, Slot};
use compute_worker::job::remote::SiteReporter;
use compute_worker::site::{Retry, SiteClient};
use md5::{Digest, Md5};
use support::site::{FakeSite, SECRET};

const KEY: &str = "datasets/input_data.zip";

fn zip_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // Stored, so that tests can find (and damage) a member's bytes.
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, content) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn dataset() -> Vec<u8> {
    zip_bytes(&[
        ("data/train.csv", "x,y\n1,2\n3,4\n"),
        ("data/test.csv", "x\n5\n"),
        ("README", "the input data"),
    ])
}

fn check_extracted(dir: &Path) {
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("data/train.csv"), "x,y\n1,2\n3,4\n");
    assert_eq!(read("data/test.csv"), "x\n5\n");
    assert_eq!(read("README"), "the input data");
}

/// A presigned-style URL for `key` with its own signature.
fn signed(site: &FakeSite, key: &str, sig: &str) -> String {
    format!(
        "{}/storage/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={sig}",
        site.url()
    )
}

/// The reporter of one job, sharing `cache` with the others.
fn reporter(site: &FakeSite, cache: &Arc<BundleCache>) -> SiteReporter {
    let client = SiteClient::new(&site.api_url(), site.submission_id, site.user_pk, SECRET)
        .unwrap()
        .with_retry(Retry {
            attempts: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        });
    SiteReporter::new(client, UnzipLimits::default(), Some(cache.clone()))
}

async fn fetch(
    r: &SiteReporter,
    slot: Slot,
    url: &str,
    job: &Path,
) -> Result<Option<String>, String> {
    let dest = job.join(slot.dir());
    std::fs::create_dir_all(&dest).unwrap();
    let scratch = job.join("bundles");
    std::fs::create_dir_all(&scratch).unwrap();
    r.fetch(slot, url, &dest, &scratch)
        .await
        .map_err(|e| e.message)
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

#[tokio::test]
async fn changing_presigned_urls_download_once() {
    let site = FakeSite::start(1234, 7).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap());
    let bytes = dataset();
    site.add_bundle(KEY, bytes.clone());

    // Two jobs, each with its own presigned URL for the same object.
    let (job1, job2) = (tmp.path().join("job1"), tmp.path().join("job2"));
    let md5 = fetch(
        &reporter(&site, &cache),
        Slot::InputData,
        &site.get_url(KEY),
        &job1,
    )
    .await
    .unwrap();
    assert_eq!(md5.as_deref(), Some(md5_hex(&bytes).as_str()));
    let md5 = fetch(
        &reporter(&site, &cache),
        Slot::InputData,
        &signed(&site, KEY, "second"),
        &job2,
    )
    .await
    .unwrap();
    assert_eq!(md5.as_deref(), Some(md5_hex(&bytes).as_str()));
    assert_eq!(site.get_count(KEY), 1);
    check_extracted(&job1.join("input_data"));
    check_extracted(&job2.join("input_data"));

    // The cache holds the zip under sha256(URL without query), with its
    // sidecar; the job's scratch directory holds nothing.
    let key = cache_key(&site.get_url(KEY));
    assert_eq!(key, cache_key(&format!("{}/storage/{KEY}", site.url())));
    assert_eq!(
        std::fs::read(cache.dir().join(format!("{key}.zip"))).unwrap(),
        bytes
    );
    let entries = cache.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.size, bytes.len() as u64);
    assert_eq!(entries[0].1.md5, md5_hex(&bytes));
    assert_eq!(std::fs::read_dir(job2.join("bundles")).unwrap().count(), 0);

    // reference_data is cached too (same object, same entry here).
    let job3 = tmp.path().join("job3");
    fetch(
        &reporter(&site, &cache),
        Slot::ReferenceData,
        &signed(&site, KEY, "third"),
        &job3,
    )
    .await
    .unwrap();
    check_extracted(&job3.join("input/ref"));
    assert_eq!(site.get_count(KEY), 1);
}

#[tokio::test]
async fn concurrent_jobs_download_once() {
    let site = FakeSite::start(1234, 7).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap());
    site.add_bundle(KEY, dataset());
    let (r1, r2) = (reporter(&site, &cache), reporter(&site, &cache));
    let (u1, u2) = (signed(&site, KEY, "a"), signed(&site, KEY, "b"));
    let (j1, j2) = (tmp.path().join("j1"), tmp.path().join("j2"));
    let (a, b) = tokio::join!(
        fetch(&r1, Slot::InputData, &u1, &j1),
        fetch(&r2, Slot::InputData, &u2, &j2),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(site.get_count(KEY), 1);
    check_extracted(&j1.join("input_data"));
    check_extracted(&j2.join("input_data"));
}

#[tokio::test]
async fn corrupted_cache_files_are_downloaded_again() {
    let site = FakeSite::start(1234, 7).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap());
    let bytes = dataset();
    site.add_bundle(KEY, bytes.clone());
    let cached = cache
        .dir()
        .join(format!("{}.zip", cache_key(&site.get_url(KEY))));
    let r = reporter(&site, &cache);

    fetch(
        &r,
        Slot::InputData,
        &site.get_url(KEY),
        &tmp.path().join("j1"),
    )
    .await
    .unwrap();
    assert_eq!(site.get_count(KEY), 1);

    // Overwritten with garbage of the same size: the central directory
    // does not read, so it is not trusted.
    std::fs::write(&cached, vec![0x55; bytes.len()]).unwrap();
    let j2 = tmp.path().join("j2");
    fetch(&r, Slot::InputData, &signed(&site, KEY, "2"), &j2)
        .await
        .unwrap();
    assert_eq!(site.get_count(KEY), 2);
    check_extracted(&j2.join("input_data"));
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);

    // Half-written (truncated): the size does not match the sidecar.
    std::fs::write(&cached, &bytes[..bytes.len() / 2]).unwrap();
    let j3 = tmp.path().join("j3");
    fetch(&r, Slot::InputData, &signed(&site, KEY, "3"), &j3)
        .await
        .unwrap();
    assert_eq!(site.get_count(KEY), 3);
    check_extracted(&j3.join("input_data"));

    // One byte flipped inside a member: the size and the central directory
    // are intact, the CRC check while extracting catches it.
    let mut damaged = bytes.clone();
    let at = damaged
        .windows(5)
        .position(|w| w == b"x,y\n1")
        .expect("stored member");
    damaged[at + 2] ^= 0xff;
    std::fs::write(&cached, &damaged).unwrap();
    let j4 = tmp.path().join("j4");
    fetch(&r, Slot::InputData, &signed(&site, KEY, "4"), &j4)
        .await
        .unwrap();
    assert_eq!(site.get_count(KEY), 4);
    check_extracted(&j4.join("input_data"));
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);

    // And intact again: a hit.
    fetch(
        &r,
        Slot::InputData,
        &signed(&site, KEY, "5"),
        &tmp.path().join("j5"),
    )
    .await
    .unwrap();
    assert_eq!(site.get_count(KEY), 4);
}

#[tokio::test]
async fn only_datasets_are_cached() {
    let site = FakeSite::start(1234, 7).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap());
    let program = zip_bytes(&[("metadata", "command: echo hi\n")]);
    site.add_bundle("program.zip", program.clone());
    let r = reporter(&site, &cache);
    for (i, slot) in [Slot::Program, Slot::IngestionProgram, Slot::Program]
        .into_iter()
        .enumerate()
    {
        let job = tmp.path().join(format!("j{i}"));
        let md5 = fetch(
            &r,
            slot,
            &signed(&site, "program.zip", &i.to_string()),
            &job,
        )
        .await
        .unwrap();
        assert_eq!(md5.as_deref(), Some(md5_hex(&program).as_str()));
        assert_eq!(
            std::fs::read_to_string(job.join(slot.dir()).join("metadata")).unwrap(),
            "command: echo hi\n"
        );
    }
    assert_eq!(site.get_count("program.zip"), 3);
    assert!(cache.entries().unwrap().is_empty());
}

#[tokio::test]
async fn failed_downloads_fail_as_without_a_cache() {
    let site = FakeSite::start(1234, 7).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BundleCache::new(tmp.path().join("cache"), 1 << 30).unwrap());
    let r = reporter(&site, &cache);
    let with = fetch(
        &r,
        Slot::InputData,
        &site.get_url("missing.zip"),
        &tmp.path().join("a"),
    )
    .await
    .unwrap_err();
    let plain = SiteReporter::new(
        SiteClient::new(&site.api_url(), 1234, 7, SECRET).unwrap(),
        UnzipLimits::default(),
        None,
    );
    let without = fetch(
        &plain,
        Slot::InputData,
        &site.get_url("missing.zip"),
        &tmp.path().join("b"),
    )
    .await
    .unwrap_err();
    // The same message, but for where the file was to go.
    for m in [&with, &without] {
        assert!(m.starts_with("Problem fetching"), "{m}");
        assert!(m.contains("HTTP 404"), "{m}");
    }
    assert!(cache.entries().unwrap().is_empty());
    assert_eq!(cache.total_bytes().unwrap(), 0);

    // The bundle appears: fetched and cached.
    site.add_bundle("missing.zip", dataset());
    let job = tmp.path().join("c");
    fetch(&r, Slot::InputData, &site.get_url("missing.zip"), &job)
        .await
        .unwrap();
    check_extracted(&job.join("input_data"));
    assert_eq!(cache.entries().unwrap().len(), 1);
}
