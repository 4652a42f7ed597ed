//! Hostile layers and archives: bounds on what an image unpacks to
//! (bytes, entries, sparse files), and `import` of archives whose blobs
//! are not regular files or not of their declared size.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use rootfs_cache::{unpack_layer, NoProgress, Store, UnpackBounds, UnpackOptions};

const GIB: u64 = 1 << 30;

/// One GNU sparse entry `big` of `apparent` bytes holding 512 real bytes at its end.
fn sparse_tar(apparent: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    let g = h.as_gnu_mut().unwrap();
    g.sparse[0].set_offset(apparent - 512);
    g.sparse[0].set_length(512);
    g.set_real_size(apparent);
    h.set_cksum();
    b.append(&h, &[7u8; 512][..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_sparse_entry_of_4_gib_is_written_sparse() {
    let d = tempfile::tempdir().unwrap();
    let tar = sparse_tar(4 * GIB);
    assert!(tar.len() < 4096, "{}", tar.len());
    let blob = d.path().join("blob");
    std::fs::write(&blob, &tar).unwrap();
    let dest = d.path().join("out");
    let o = UnpackOptions {
        image: "sparse".into(),
        layer: "l".into(),
        ..Default::default()
    };
    let r = unpack_layer(&blob, "", &dest, &o).unwrap();
    assert_eq!(r.bytes, 4 * GIB);
    let m = std::fs::metadata(dest.join("big")).unwrap();
    assert_eq!(m.len(), 4 * GIB);
    assert!(
        m.blocks() * 512 < (1 << 20),
        "4 GiB sparse entry took {} bytes of disk",
        m.blocks() * 512
    );
    // Past the byte bound, the same entry is refused before a byte is written.
    let o = UnpackOptions {
        bounds: UnpackBounds {
            max_bytes: GIB,
            ..Default::default()
        },
        ..o
    };
    let e = unpack_layer(&blob, "", &d.path().join("out2"), &o).unwrap_err();
    assert!(e.to_string().contains("IMAGE_MAX_BYTES"), "{e}");
    assert!(!d.path().join("out2/big").exists());
}

fn store_with(dir: &Path, bounds: UnpackBounds) -> Store {
    let mut o = opts(dir);
    o.image_bounds = bounds;
    Store::open(dir.join("s"), o).unwrap()
}

/// Entries of `l/` and of the store's scratch directories.
fn leftovers(store: &Store) -> (Vec<String>, Vec<String>) {
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut scratch = Vec::new();
    for e in std::fs::read_dir(store.root().join("tmp")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            scratch.extend(names(&p));
        }
    }
    (names(&store.root().join("l")), scratch)
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_byte_bound_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        UnpackBounds {
            max_bytes: 8 << 20,
            max_entries: 1000,
        },
    );
    let good = dir.path().join("good");
    write_oci_layout(
        &good,
        &TestImage::new(vec![layer(&[file("ok", b"ok")], Comp::Gzip)]),
        "example.org/good:1",
    );
    store.import(&good, None, &NoProgress).await.unwrap();
    let (layers_before, _) = leftovers(&store);

    // 64 files of 1 MiB (not zeros: nothing to write sparse), 64 MiB in a
    // blob of a few hundred KiB.
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let entries: Vec<E> = (0..64)
        .map(|i| E::File(format!("f{i:02}"), chunk.clone(), 0o644, 0))
        .collect();
    let bomb = layer(&entries, Comp::Gzip);
    assert!(bomb.blob.len() < 4 << 20, "{}", bomb.blob.len());
    let layout = dir.path().join("bomb");
    write_oci_layout(&layout, &TestImage::new(vec![bomb]), "example.org/bomb:1");
    let e = store.import(&layout, None, &NoProgress).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("IMAGE_MAX_BYTES"), "{msg}");
    assert!(
        msg.contains("f08"),
        "stopped at the first file past the bound: {msg}"
    );

    let names: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["example.org/good:1"]);
    let (layers, scratch) = leftovers(&store);
    assert_eq!(layers, layers_before);
    assert!(scratch.is_empty(), "{scratch:?}");
}

#[tokio::test]
async fn many_empty_files_stop_at_the_entry_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        UnpackBounds {
            max_bytes: GIB,
            max_entries: 1000,
        },
    );
    let entries: Vec<E> = (0..3000).map(|i| file(&format!("e{i}"), b"")).collect();
    let layout = dir.path().join("many");
    write_oci_layout(
        &layout,
        &TestImage::new(vec![layer(&entries, Comp::Gzip)]),
        "example.org/many:1",
    );
    let e = store.import(&layout, None, &NoProgress).await.unwrap_err();
    assert!(e.to_string().contains("IMAGE_MAX_ENTRIES"), "{e}");
    assert!(store.images().unwrap().is_empty());
    let (layers, scratch) = leftovers(&store);
    assert!(
        layers.is_empty() && scratch.is_empty(),
        "{layers:?} {scratch:?}"
    );

    // Within the bound, the image's entries are counted and listed.
    let entries: Vec<E> = (0..500).map(|i| file(&format!("e{i}"), b"")).collect();
    write_oci_layout(
        &layout,
        &TestImage::new(vec![layer(&entries, Comp::Gzip)]),
        "example.org/many:1",
    );
    store.import(&layout, None, &NoProgress).await.unwrap();
    assert_eq!(store.images().unwrap()[0].entries, 500);
}

/// `import` of `path`, failing the test after 20 s (the bug it guards
/// against reads forever).
async fn import_err(store: &Store, path: &Path) -> String {
    match tokio::time::timeout(
        Duration::from_secs(20),
        store.import(path, None, &NoProgress),
    )
    .await
    {
        Ok(Ok(_)) => panic!("import of {} succeeded", path.display()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("import of {} still reading after 20 s", path.display()),
    }
}

/// A tar of `src` that stores symlinks as symlinks.
fn tar_no_follow(src: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}

fn relink(p: &Path, target: &str) {
    std::fs::remove_file(p).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

#[tokio::test]
async fn oci_layout_blobs_must_be_regular_files_of_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), UnpackBounds::default());
    let img = TestImage::new(vec![layer(&[file("a", b"a")], Comp::Gzip)]);
    let layer_hex = img.layers[0].digest()[7..].to_string();

    // A layer blob linking to /dev/zero: as a directory, and as an oci-archive.
    let layout = dir.path().join("zero");
    write_oci_layout(&layout, &img, "example.org/zero:1");
    relink(&layout.join("blobs/sha256").join(&layer_hex), "/dev/zero");
    let msg = import_err(&store, &layout).await;
    assert!(msg.contains("symbolic link"), "{msg}");
    let archive = dir.path().join("zero.tar");
    tar_no_follow(&layout, &archive);
    let msg = import_err(&store, &archive).await;
    assert!(msg.contains("symbolic link"), "{msg}");

    // The manifest blob linking to /dev/zero (read whole: the OOM case).
    let layout = dir.path().join("zero-manifest");
    write_oci_layout(&layout, &img, "example.org/zero:2");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    relink(&layout.join("blobs/sha256").join(m), "/dev/zero");
    let msg = import_err(&store, &layout).await;
    assert!(msg.contains("symbolic link"), "{msg}");

    // A blob longer than its descriptor says.
    let layout = dir.path().join("long");
    write_oci_layout(&layout, &img, "example.org/long:1");
    let p = layout.join("blobs/sha256").join(&layer_hex);
    let mut b = std::fs::read(&p).unwrap();
    b.extend_from_slice(&[0; 100]);
    std::fs::write(&p, b).unwrap();
    let msg = import_err(&store, &layout).await;
    assert!(msg.contains("declares"), "{msg}");
    assert!(store.images().unwrap().is_empty());
}

#[tokio::test]
async fn docker_save_layers_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), UnpackBounds::default());
    let tar = tar_of(&[file("a", b"a")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&tar)]}
    }))
    .unwrap();
    let save = dir.path().join("save");
    std::fs::create_dir_all(save.join("l0")).unwrap();
    std::fs::write(save.join("c.json"), &config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", save.join("l0/layer.tar")).unwrap();
    std::fs::write(
        save.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([
            {"Config": "c.json", "RepoTags": ["saved/zero:1"], "Layers": ["l0/layer.tar"]}
        ]))
        .unwrap(),
    )
    .unwrap();
    let msg = import_err(&store, &save).await;
    assert!(msg.contains("symbolic link"), "{msg}");
    let archive = dir.path().join("save.tar");
    tar_no_follow(&save, &archive);
    let msg = import_err(&store, &archive).await;
    assert!(msg.contains("symbolic link"), "{msg}");

    // A directory of layers reached through a symlink is refused too.
    std::fs::remove_file(save.join("l0/layer.tar")).unwrap();
    std::fs::write(dir.path().join("layer.tar"), &tar).unwrap();
    std::fs::remove_dir(save.join("l0")).unwrap();
    std::os::unix::fs::symlink(dir.path(), save.join("l0")).unwrap();
    let msg = import_err(&store, &save).await;
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(store.images().unwrap().is_empty());
}
