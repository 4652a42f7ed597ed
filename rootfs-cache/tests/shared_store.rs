//! Shared stores: filled once (recording tree digests), read by other
//! stores that never write, lock or collect in them, with a real registry
//! (distribution 2.8 on 127.0.0.1) that is stopped before they read.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use rootfs_cache::{Error, NoProgress, Store, StoreOptions};

fn image() -> TestImage {
    TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(
            &[
                E::Dir("srv", 0),
                E::File("srv/owned".into(), b"www".to_vec(), 0o640, 33),
            ],
            Comp::Zstd,
        ),
    ])
}

/// A shared store in `dir/shared` holding `image()` as `REF`, the registry
/// already gone; returns the reference.
async fn filled(dir: &Path) -> String {
    let reg = Registry::start();
    push(&reg.host(), "test/shared:1", &image()).await;
    let reference = format!("{}/test/shared:1", reg.host());
    let mut o = opts(dir);
    o.record_tree_digests = true;
    let admin = Store::open(dir.join("shared"), o).unwrap();
    admin.pull(&reference, &NoProgress).await.unwrap();
    drop((admin, reg));
    reference
}

/// A private store in `dir/name` reading `shared`.
fn reader(dir: &Path, name: &str, shared: &Path) -> Store {
    let o = StoreOptions {
        additional_stores: vec![shared.to_path_buf()],
        ..opts(dir)
    };
    Store::open(dir.join(name), o).unwrap()
}

/// Every path of `root` with its size, mode and mtime.
fn snapshot(root: &Path) -> Vec<(String, u64, u32, i64)> {
    tree(root)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            (p, m.len(), m.mode(), m.mtime())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_use_a_shared_ones_layers_in_place_with_the_registry_gone() {
    let dir = tempfile::tempdir().unwrap();
    let reference = filled(dir.path()).await;
    let shared = dir.path().join("shared");
    let before = snapshot(&shared);
    for name in ["a", "b"] {
        let s = reader(dir.path(), name, &shared);
        let image = s.get(&reference).unwrap();
        assert_eq!(image.layers.len(), 2);
        for l in &image.layers {
            assert!(l.starts_with(shared.join("l")), "{}", l.display());
        }
        assert_eq!(image.config.user.as_deref(), Some("33:33"));
        // Nothing was copied into the private store.
        assert_eq!(fs::read_dir(s.root().join("l")).unwrap().count(), 0);
        assert!(s.images().unwrap().is_empty());
        let owned = image.layers[0].join("srv/owned");
        assert_eq!(fs::read(&owned).unwrap(), b"www");
        assert_eq!(fs::metadata(&owned).unwrap().uid(), 33);
    }
    // The shared store was not written to (no lock, lease, record, scratch).
    assert_eq!(snapshot(&shared), before);
    // An image it does not hold is still not found (and would be pulled).
    let s = reader(dir.path(), "c", &shared);
    assert!(matches!(
        s.get("127.0.0.1:1/test/other:1"),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_shared_layer_is_refused_with_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let reference = filled(dir.path()).await;
    let shared = dir.path().join("shared");
    let top = reader(dir.path(), "a", &shared)
        .get(&reference)
        .unwrap()
        .layers[0]
        .clone();
    fs::write(top.join("srv/owned"), b"WWW").unwrap();
    let e = reader(dir.path(), "b", &shared)
        .get(&reference)
        .unwrap_err();
    assert!(matches!(e, Error::SharedStore { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    let diff_id = &image().layers[1].diff_id;
    assert!(
        msg.contains(&format!("layer {diff_id}")) && msg.contains("fails its digest check"),
        "{msg}"
    );
    assert!(msg.contains(&shared.display().to_string()), "{msg}");

    // A layer added to, or a manifest swapped, are refused too.
    fs::write(top.join("srv/owned"), b"www").unwrap();
    reader(dir.path(), "c", &shared).get(&reference).unwrap();
    fs::write(top.join("srv/extra"), b"").unwrap();
    let e = reader(dir.path(), "d", &shared)
        .get(&reference)
        .unwrap_err();
    assert!(e.to_string().contains("fails its digest check"), "{e}");
    fs::remove_file(top.join("srv/extra")).unwrap();
    let blobs = shared.join("blobs/sha256");
    for b in fs::read_dir(&blobs).unwrap().flatten() {
        let text = fs::read_to_string(b.path()).unwrap();
        if text.contains("\"layers\"") {
            fs::write(b.path(), text.replace("\"layers\"", " \"layers\"")).unwrap();
        }
    }
    let e = reader(dir.path(), "e", &shared)
        .get(&reference)
        .unwrap_err();
    assert!(e.to_string().contains("its manifest"), "{e}");
    assert!(e.to_string().contains("fails its digest check"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_filled_without_tree_digests_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    push(&reg.host(), "test/plain:1", &image()).await;
    let reference = format!("{}/test/plain:1", reg.host());
    let plain = Store::open(dir.path().join("plain"), opts(dir.path())).unwrap();
    plain.pull(&reference, &NoProgress).await.unwrap();
    let e = reader(dir.path(), "a", plain.root())
        .get(&reference)
        .unwrap_err();
    assert!(
        e.to_string().contains("no recorded tree digest") && e.to_string().contains("--store"),
        "{e}"
    );
    // Pulling it again with digests recorded makes it usable, in place.
    let mut o = opts(dir.path());
    o.record_tree_digests = true;
    let admin = Store::open(dir.path().join("plain"), o).unwrap();
    admin.pull(&reference, &NoProgress).await.unwrap();
    reader(dir.path(), "b", admin.root())
        .get(&reference)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_shared_store_on_a_read_only_mount_works() {
    let dir = tempfile::tempdir().unwrap();
    let reference = filled(dir.path()).await;
    let ro = ReadOnlyMount::new(&dir.path().join("shared"), dir.path().join("ro"));
    assert!(
        fs::write(ro.0.join("probe"), b"").is_err(),
        "the mount is writable"
    );
    let image = reader(dir.path(), "a", &ro.0).get(&reference).unwrap();
    assert!(image.layers.iter().all(|l| l.starts_with(&ro.0)));
    drop(ro);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_shared_store_of_another_user_is_refused_naming_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let reference = filled(dir.path()).await;
    let shared = dir.path().join("shared");
    std::os::unix::fs::chown(&shared, Some(12345), None).unwrap();
    let e = reader(dir.path(), "a", &shared)
        .get(&reference)
        .unwrap_err();
    assert!(matches!(e, Error::SharedStore { .. }), "{e:?}");
    assert!(e.to_string().contains("belongs to uid 12345"), "{e}");
}
