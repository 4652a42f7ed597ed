//! Test support specific to rootfs-cache (store options, progress counters,
//! tree listings); the registry fixture and the image builders come from the
//! `test-support` crate.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rootfs_cache::{Progress, ProgressEvent, StoreOptions};
pub use test_support::*;

/// Store options isolated from the host's configuration files.
pub fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        registries_conf_files: vec![dir.join("registries.conf")],
        auth_files: vec![dir.join("auth.json")],
        ..Default::default()
    }
}

/// Counts progress events.
#[derive(Default)]
pub struct Counter {
    pub started: std::sync::Mutex<Vec<String>>,
    pub cached: AtomicUsize,
    pub unpacked: AtomicUsize,
}

impl Progress for Counter {
    fn event(&self, ev: &ProgressEvent) {
        match ev {
            ProgressEvent::DownloadStarted { digest, .. } => {
                self.started.lock().unwrap().push(digest.clone())
            }
            ProgressEvent::LayerCached { .. } => {
                self.cached.fetch_add(1, Ordering::SeqCst);
            }
            ProgressEvent::LayerUnpacked { .. } => {
                self.unpacked.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

pub fn counter() -> Arc<Counter> {
    Arc::new(Counter::default())
}

/// All paths below `root` (relative), to check nothing unexpected was kept.
pub fn tree(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    fn walk(root: &Path, p: &Path, v: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                v.push(path.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &path, v);
                }
            }
        }
    }
    walk(root, root, &mut v);
    v.sort();
    v
}
