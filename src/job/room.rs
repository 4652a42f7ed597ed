//! A full disk: making room by evicting what no running job uses (images
//! of the store, zips of the dataset cache), least recently used first,
//! before a pull or a download is tried once more.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::bundle_cache::BundleCache;
use crate::units::human;

/// What [`make_room`] evicted.
#[derive(Debug, Default)]
pub struct Evicted {
    pub images: Vec<String>,
    pub bundles: usize,
    /// Bytes free afterwards on the file system that was full.
    pub free: u64,
}

impl Evicted {
    /// For the job's log: `evicted 2 images (a, b) and 1 cached bundle; 1.2 GiB free`.
    pub fn describe(&self) -> String {
        let images = if self.images.is_empty() {
            "no image".to_string()
        } else {
            format!(
                "{} image{} ({})",
                self.images.len(),
                if self.images.len() == 1 { "" } else { "s" },
                self.images.join(", ")
            )
        };
        format!(
            "evicted {images} and {} cached bundle{}; {} free",
            self.bundles,
            if self.bundles == 1 { "" } else { "s" },
            human(self.free)
        )
    }
}

enum Candidate {
    Image(String),
    Bundle(String),
}

/// Evict, least recently used first, the images of `store` and the zips
/// of `bundles` that no running job holds and that lie on the file system
/// of `full` (the directory that ran out of space), until `needed` bytes
/// are free there or nothing evictable is left.
pub fn make_room(
    store: Option<&rootfs_cache::Store>,
    bundles: Option<&BundleCache>,
    full: &Path,
    needed: u64,
) -> Evicted {
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let full_dev = device(full);
    let same_fs = |p: &Path| full_dev.is_some() && device(p) == full_dev;
    let free = || fs4::available_space(full).unwrap_or(0);

    // (last use in ms since the epoch, what)
    let mut candidates: Vec<(u64, Candidate)> = Vec::new();
    if let Some(store) = store.filter(|s| same_fs(s.root())) {
        for i in store.images().unwrap_or_default() {
            if !i.in_use {
                let used = i
                    .last_used
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                candidates.push((used, Candidate::Image(i.name)));
            }
        }
    }
    if let Some(bundles) = bundles.filter(|b| same_fs(b.dir())) {
        for (key, sidecar) in bundles.entries().unwrap_or_default() {
            candidates.push((sidecar.last_used_ms, Candidate::Bundle(key)));
        }
    }
    candidates.sort_by_key(|(used, _)| *used);

    let mut evicted = Evicted::default();
    for (_, c) in candidates {
        if free() >= needed {
            break;
        }
        match c {
            // A store's refusal (leased since the listing, say) leaves the
            // image alone.
            Candidate::Image(name) => match store.map(|s| s.remove(&name)) {
                Some(Ok(())) => evicted.images.push(name),
                Some(Err(e)) => tracing::debug!(image = %name, error = %e, "not evicted"),
                None => {}
            },
            Candidate::Bundle(key) => {
                if let Some(Ok(Some(_))) = bundles.map(|b| b.remove_unused(&key)) {
                    evicted.bundles += 1;
                }
            }
        }
    }
    evicted.free = free();
    evicted
}
