//! The cap on an image's size, checked against its manifest before any
//! blob is fetched, with a real registry (distribution 2.8 on 127.0.0.1).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rootfs_cache::{Error, NoProgress, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_the_cap_fails_fast_naming_its_size_and_the_cap_and_fetches_no_blob() {
    let reg = Registry::start();
    let img = TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(&[file("extra", &[7u8; 4096])], Comp::None),
    ]);
    push(&reg.host(), "test/capped:1", &img).await;
    let size: u64 = img.layers.iter().map(|l| l.blob.len() as u64).sum();
    let reference = format!("{}/test/capped:1", reg.host());

    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_image_size = Some(size - 1);
    let store = Store::open(dir.path().join("store"), o.clone()).unwrap();
    let t = Instant::now();
    let e = store.pull(&reference, &NoProgress).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(e, Error::OverSizeCap { size: s, cap, layers: 2, .. } if s == size && cap == size - 1),
        "{e:?}"
    );
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(msg.starts_with(&reference), "{msg}");
    assert!(msg.contains(&format!("({size} bytes)")), "{msg}");
    assert!(
        msg.contains("cap of ") && msg.contains(&format!("({} bytes)", size - 1)),
        "{msg}"
    );
    // Not one blob (layers or config) was asked for, and none is kept.
    for l in &img.layers {
        assert_eq!(reg.blob_gets(&l.digest()), 0, "{}", l.digest());
    }
    assert_eq!(reg.blob_gets(&sha(&img.config)), 0);
    let kept: Vec<_> = tree(&dir.path().join("store"))
        .into_iter()
        .filter(|p| p.starts_with("blobs/sha256/") || p.starts_with("l/"))
        .collect();
    assert!(kept.is_empty(), "{kept:?}");

    // At the cap, the same image pulls.
    o.max_image_size = Some(size);
    let store = Store::open(dir.path().join("store"), o).unwrap();
    store.pull(&reference, &NoProgress).await.unwrap();
    assert_eq!(reg.blob_gets(&img.layers[0].digest()), 1);
}
