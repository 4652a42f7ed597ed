//! Store behaviour: LRU eviction, leases, prune, import, crash cleanup.

mod common;

use common::*;
use rootfs_cache::{NoProgress, Store, StoreOptions};

fn unique(tag: &str, kib: usize) -> Layer {
    let data: Vec<u8> = (0..kib * 1024)
        .map(|i| (i * 31 + tag.len() * 7) as u8 ^ tag.as_bytes()[0])
        .collect();
    layer(&[file(&format!("data-{tag}"), &data)], Comp::Gzip)
}

async fn pull(store: &Store, reg: &Registry, name: &str) -> rootfs_cache::Image {
    store
        .pull(&format!("{}/{name}", reg.host()), &NoProgress)
        .await
        .unwrap()
}

fn names(store: &Store) -> Vec<String> {
    store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_respects_leases_and_shared_layers() {
    let reg = Registry::start();
    // a and b share the busybox base; c does not.
    let base = || busybox_layer(Comp::Gzip);
    push(
        &reg.host(),
        "lru/a:1",
        &TestImage::new(vec![base(), unique("a", 300)]),
    )
    .await;
    push(
        &reg.host(),
        "lru/b:1",
        &TestImage::new(vec![base(), unique("b", 300)]),
    )
    .await;
    push(
        &reg.host(),
        "lru/c:1",
        &TestImage::new(vec![unique("c", 300)]),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let a = pull(&store, &reg, "lru/a:1").await;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = pull(&store, &reg, "lru/b:1").await;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let _c = pull(&store, &reg, "lru/c:1").await;
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(a.layers[1], b.layers[1], "base layer shared on disk");
    // Using a (a lease) makes it the most recent: LRU order is now b, c, a.
    drop(store.lease(&a).unwrap());
    assert_eq!(
        names(&store),
        ["a:1", "c:1", "b:1"],
        "most recently used first"
    );
    let info = store.images().unwrap();
    assert!(info.iter().all(|i| i.size > 0 && !i.in_use));

    // Shrink by a little: only b (least recently used) goes; its base layer
    // stays, because a still uses it.
    let total = store.total_bytes().unwrap();
    let rep = store.prune(total - 1).unwrap();
    assert_eq!(rep.removed.len(), 1);
    assert!(rep.removed[0].ends_with("lru/b:1"));
    assert!(a.layers[1].join("bin/busybox").exists());
    assert!(!b.layers[0].exists(), "b's own layer deleted");
    assert!(
        rep.freed_bytes >= 300 * 1024 && rep.freed_bytes < 400 * 1024,
        "{rep:?}"
    );

    // A leased image is never evicted, even by prune(0).
    let c = store.get(&format!("{}/lru/c:1", reg.host())).unwrap();
    let lease = store.lease(&c).unwrap();
    assert!(store
        .images()
        .unwrap()
        .iter()
        .any(|i| i.in_use && i.name.ends_with("c:1")));
    let rep = store.prune(0).unwrap();
    assert!(rep.removed.iter().all(|n| !n.ends_with("c:1")));
    assert!(rep.kept_in_use.iter().any(|n| n.ends_with("c:1")));
    assert_eq!(names(&store), ["c:1"]);
    assert!(c.layers[0].exists());
    assert!(
        !a.layers[1].exists(),
        "shared base gone once no image uses it"
    );

    drop(lease);
    let rep = store.prune(0).unwrap();
    assert_eq!(rep.remaining_bytes, 0, "{rep:?}");
    assert!(store.images().unwrap().is_empty());
    assert!(tree(&store.root().join("l")).is_empty());
    assert!(tree(&store.root().join("blobs/sha256")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_bound_evicts_oldest_after_pull() {
    let reg = Registry::start();
    for t in ["x", "y", "z"] {
        push(
            &reg.host(),
            &format!("bound/{t}:1"),
            &TestImage::new(vec![unique(t, 400)]),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("s"),
        StoreOptions {
            max_bytes: 1000 * 1024,
            ..opts(dir.path())
        },
    )
    .unwrap();
    for t in ["x", "y", "z"] {
        pull(&store, &reg, &format!("bound/{t}:1")).await;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(names(&store), ["z:1", "y:1"]);
    assert!(store.total_bytes().unwrap() <= 1000 * 1024);
}

#[test]
fn crash_leftovers_are_cleaned_at_open_but_live_scratch_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let live = Store::open(&root, opts(dir.path())).unwrap();
    // A crashed process: its lock file is not locked any more.
    let tmp = root.join("tmp");
    std::fs::write(tmp.join("999999-1-0.lock"), b"").unwrap();
    std::fs::create_dir_all(tmp.join("999999-1-0/unpack-3/usr/bin")).unwrap();
    std::fs::write(tmp.join("999999-1-0/layer-2"), b"half a download").unwrap();
    std::fs::create_dir_all(tmp.join("orphan/x")).unwrap();
    let live_scratch: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_type().unwrap().is_dir()
                && !e.file_name().to_string_lossy().starts_with("999999")
                && e.file_name() != "orphan"
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(live_scratch.len(), 1);

    let second = Store::open(&root, opts(dir.path())).unwrap();
    assert!(!tmp.join("999999-1-0").exists());
    assert!(!tmp.join("999999-1-0.lock").exists());
    assert!(!tmp.join("orphan").exists());
    assert!(
        live_scratch[0].exists(),
        "a running store's scratch is left alone"
    );
    // A store that goes away normally leaves nothing for the next open to
    // mistake for a crash; a clone keeps the scratch alive.
    let clone = live.clone();
    drop(live);
    assert!(live_scratch[0].exists());
    drop((clone, second));
    assert_eq!(tree(&tmp), Vec::<String>::new());
}

// ------------------------------------------------------------------ import

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_oci_layout_directory_and_archive() {
    let dir = tempfile::tempdir().unwrap();
    let img = TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(&[file("hello", b"hi")], Comp::Zstd),
    ]);
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &img, "example.org/tools/bb:1.0");
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let got = store.import(&layout, None, &NoProgress).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "example.org/tools/bb:1.0");
    assert!(got[0].layers[1].join("bin/busybox").exists());
    assert_eq!(
        std::fs::read(got[0].layers[0].join("hello")).unwrap(),
        b"hi"
    );
    assert_eq!(store.get("example.org/tools/bb:1.0").unwrap(), got[0]);

    // oci-archive: a tarball of the layout, with a bare tag as its ref name.
    let layout2 = dir.path().join("layout2");
    write_oci_layout(&layout2, &img, "v2");
    let archive = dir.path().join("My_Tool.tar");
    tar_dir(&layout2, &archive);
    let got2 = store.import(&archive, None, &NoProgress).await.unwrap();
    assert_eq!(got2[0].name, "localhost/my-tool:v2");
    assert_eq!(
        got2[0].layers, got[0].layers,
        "layers shared with the first import"
    );
    // An explicit name wins.
    let got3 = store
        .import(&archive, Some("busybox:mine"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(got3[0].name, "docker.io/library/busybox:mine");

    // A corrupted blob in the layout is refused.
    let bad = dir.path().join("bad");
    let img2 = TestImage::new(vec![layer(&[file("other", b"o")], Comp::Gzip)]);
    write_oci_layout(&bad, &img2, "bad:1");
    let ld = img2.layers[0].digest();
    let p = bad.join("blobs/sha256").join(&ld[7..]);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 3] ^= 1;
    std::fs::write(&p, b).unwrap();
    let err = store.import(&bad, None, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, rootfs_cache::Error::DigestMismatch { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_docker_save_archive() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save");
    let layers = [
        tar_of(&[
            E::Dir("bin", 0),
            E::File(
                "bin/busybox".into(),
                std::fs::read("/bin/busybox").unwrap(),
                0o755,
                0,
            ),
        ]),
        tar_of(&[
            file("etc/motd", b"saved"),
            E::File("www".into(), b"w".to_vec(), 0o600, 33),
        ]),
    ];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "sh"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cname = format!("{}.json", &sha(&config)[7..]);
    std::fs::create_dir_all(&save).unwrap();
    std::fs::write(save.join(&cname), &config).unwrap();
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let d = save.join(format!("layer{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("layer.tar"), l).unwrap();
        paths.push(format!("layer{i}/layer.tar"));
    }
    std::fs::write(
        save.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([
            {"Config": cname, "RepoTags": ["saved/app:3", "saved/app:latest"], "Layers": paths}
        ]))
        .unwrap(),
    )
    .unwrap();
    let archive = dir.path().join("app.tar");
    tar_dir(&save, &archive);

    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let got = store.import(&archive, None, &NoProgress).await.unwrap();
    let names: Vec<_> = got.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["docker.io/saved/app:3", "docker.io/saved/app:latest"]
    );
    assert_eq!(got[0].layers, got[1].layers);
    assert_eq!(
        got[0].config.cmd.as_deref().unwrap(),
        ["/bin/busybox", "sh"]
    );
    assert_eq!(
        std::fs::read(got[0].layers[0].join("etc/motd")).unwrap(),
        b"saved"
    );
    assert!(got[0].layers[1].join("bin/busybox").exists());
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(got[0].layers[0].join("www").metadata().unwrap().uid(), 33);
    }
    assert_eq!(store.images().unwrap().len(), 2);

    // A layer that does not match the config's diff ids is refused.
    std::fs::write(
        save.join("layer1/layer.tar"),
        tar_of(&[file("etc/motd", b"evil")]),
    )
    .unwrap();
    let store2 = Store::open(dir.path().join("s2"), opts(dir.path())).unwrap();
    let err = store2
        .import(&save, Some("x:1"), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, rootfs_cache::Error::DigestMismatch { .. }),
        "{err}"
    );
    assert!(store2.images().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_refuses_leased_images_and_collects_layers() {
    let dir = tempfile::tempdir().unwrap();
    let img = TestImage::new(vec![layer(&[file("only", b"1")], Comp::Gzip)]);
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &img, "localhost/rm:1");
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let got = store.import(&layout, None, &NoProgress).await.unwrap();
    let lease = store.lease(&got[0]).unwrap();
    assert_eq!(lease.image(), "localhost/rm:1");
    let err = store.remove("localhost/rm:1").unwrap_err();
    assert!(matches!(err, rootfs_cache::Error::InUse(_)), "{err}");
    drop(lease);
    store.remove("localhost/rm:1").unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(matches!(
        store.get("localhost/rm:1"),
        Err(rootfs_cache::Error::NotFound(_))
    ));
    assert!(tree(&store.root().join("l")).is_empty());
    assert!(tree(&store.root().join("blobs/sha256")).is_empty());
}
