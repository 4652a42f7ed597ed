//! Helpers for the store's unit tests: stores isolated from the host's
//! configuration, and images put in them by importing OCI layouts built on
//! the spot (no registry, no network).

use std::path::{Path, PathBuf};

use test_support::{file, layer, write_oci_layout, Comp, Layer, TestImage};

use super::{Image, ImageRecord, Store, StoreOptions};
use crate::progress::NoProgress;

/// Options that read no file of the host (`dir` holds none of them).
pub(super) fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        registries_conf_files: vec![dir.join("registries.conf")],
        auth_files: vec![dir.join("auth.json")],
        ..Default::default()
    }
}

/// A store in `dir/store`.
pub(super) fn store(dir: &Path) -> Store {
    Store::open(dir.join("store"), opts(dir)).unwrap()
}

/// A layer holding one file `tag` of `bytes` bytes, unlike any other tag's.
pub(super) fn unique(tag: &str, bytes: usize) -> Layer {
    let seed = tag
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect();
    layer(&[file(tag, &data)], Comp::Gzip)
}

/// Write `layers` as an OCI layout below `dir` and import it as `name`.
pub(super) async fn add(store: &Store, dir: &Path, name: &str, layers: Vec<Layer>) -> Image {
    let layout = layout_dir(dir);
    write_oci_layout(&layout, &TestImage::new(layers), "latest");
    let mut v = store
        .import(&layout, Some(name), &NoProgress)
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    v.remove(0)
}

/// A fresh directory below `dir` for an archive.
pub(super) fn layout_dir(dir: &Path) -> PathBuf {
    let n = std::fs::read_dir(dir).unwrap().count();
    dir.join(format!("layout-{n}"))
}

/// The record of `name`.
pub(super) fn record(store: &Store, name: &str) -> ImageRecord {
    store.find_record(name).unwrap()
}

/// Make `name` look last used at `ms` (milliseconds since the epoch).
pub(super) fn set_last_used(store: &Store, name: &str, ms: u64) {
    let mut r = record(store, name);
    r.last_used_ms = ms;
    store.write_record(&r).unwrap();
}

/// Names in the store, sorted.
pub(super) fn names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    v.sort();
    v
}

/// Entries of `dir` below the store root (e.g. `l`), sorted.
pub(super) fn listing(store: &Store, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
