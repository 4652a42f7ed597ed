//! Leases and garbage collection: what keeps an image in the store while a
//! job runs it, and what removes images (least recently used first), layers
//! and blobs nobody uses any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;

use super::{hex_of, now_ms, Image, ImageRecord, Store};
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, FileLock};

/// What [`Store::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images removed, least recently used first.
    pub removed: Vec<String>,
    /// Images that would have been removed but are leased.
    pub kept_in_use: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes the store holds afterwards.
    pub remaining_bytes: u64,
}

/// Keeps an image from being evicted while it is held (a shared flock on
/// `leases/<manifest hex>`; the kernel drops it if the process dies).
#[derive(Debug)]
pub struct Lease {
    _lock: FileLock,
    image: String,
}

impl Lease {
    /// The leased image's name.
    pub fn image(&self) -> &str {
        &self.image
    }
}
impl Store {
    pub(super) fn leased_manifests(
        &self,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>, Vec<FileLock>)> {
        // Returns (leased manifest hexes, layer dirs they protect, locks of stale
        // lease files that the caller may delete while holding them).
        let dir = self.inner.root.join("leases");
        let mut leased = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        let mut stale = Vec::new();
        for e in fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            match lock::try_exclusive(&e.path())? {
                Some(l) => stale.push(l),
                None => {
                    if let Ok(b) = fs::read(e.path()) {
                        if let Ok(v) = serde_json::from_slice::<Vec<String>>(&b) {
                            dirs.extend(v);
                        }
                    }
                    leased.insert(name);
                }
            }
        }
        Ok((leased, dirs, stale))
    }

    /// Mark `image` in use until the returned guard is dropped: eviction and
    /// `prune` skip it (and its layers). Also counts as a use for LRU.
    pub fn lease(&self, image: &Image) -> Result<Lease> {
        let path = self
            .inner
            .root
            .join("leases")
            .join(hex_of(&image.manifest_digest));
        let dirs: Vec<String> = image
            .layers
            .iter()
            .filter_map(|p| p.strip_prefix(&self.inner.root).ok())
            .map(|p| p.display().to_string())
            .collect();
        let data = serde_json::to_vec(&dirs)
            .map_err(|e| Error::io("encoding lease", io::Error::other(e)))?;
        let lock = loop {
            if !path.exists() {
                // Never replace an existing lease file (that would drop others' flocks).
                let tmp = self.inner.scratch.join(format!("lease-{}", self.next()));
                fs::write(&tmp, &data).ctx(|| format!("writing {}", tmp.display()))?;
                let r = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
                }
            }
            let l = lock::shared(&path)?;
            // prune may have deleted the file between our open and our lock.
            if l.is_current().ctx(|| format!("stat {}", path.display()))? {
                break l;
            }
        };
        for l in &image.layers {
            if !l.is_dir() {
                return Err(Error::NotFound(image.name.clone()));
            }
        }
        if let Ok(mut rec) = self.find_record(&image.name) {
            rec.last_used_ms = now_ms();
            let _ = self.write_record(&rec);
        }
        Ok(Lease {
            _lock: lock,
            image: image.name.clone(),
        })
    }

    /// Evict least recently used, unleased images until the store holds at most
    /// `target_bytes`. A layer is deleted only when no remaining or leased image
    /// uses it. Layers and blobs no image references are always deleted.
    pub fn prune(&self, target_bytes: u64) -> Result<PruneReport> {
        self.prune_inner(target_bytes, None)
    }

    /// Remove an image by reference. Its layers and blobs are deleted unless
    /// another image or a lease still uses them. Fails with [`Error::InUse`]
    /// while the image is leased.
    pub fn remove(&self, reference: &str) -> Result<()> {
        {
            let _gc = lock::exclusive(&self.gc_lock_path())?;
            let rec = self.find_record(reference)?;
            let (leased, _, _stale) = self.leased_manifests()?;
            if leased.contains(hex_of(&rec.manifest_digest)) {
                return Err(Error::InUse(rec.name));
            }
            fs::remove_file(self.record_path(&rec.name))
                .ctx(|| format!("removing record of {}", rec.name))?;
        }
        // Collect what no image references any more.
        self.prune_inner(u64::MAX, None).map(|_| ())
    }

    fn remove_layer(&self, rel: &str) -> Result<()> {
        let dir = self.inner.root.join(rel);
        let Some(id) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(());
        };
        let _l = lock::exclusive(&self.inner.root.join("locks").join(format!("l-{id}.lock")))?;
        // Drop the metadata first, then move the tree out of `l/` atomically
        // so that a half-deleted layer is never taken as complete.
        let _ = fs::remove_file(dir.with_extension("json"));
        if dir.exists() {
            let graveyard = self.inner.scratch.join(format!("gc-{}", self.next()));
            fs::rename(&dir, &graveyard).ctx(|| format!("moving {} out", dir.display()))?;
            self.inner.opts.unpacker.remove_tree(&graveyard)?;
        }
        Ok(())
    }

    pub(super) fn prune_inner(&self, target: u64, keep: Option<&str>) -> Result<PruneReport> {
        let _gc = lock::exclusive(&self.gc_lock_path())?;
        let (leased, protected, stale) = self.leased_manifests()?;
        for l in &stale {
            let _ = fs::remove_file(l.path());
        }
        drop(stale);
        let mut recs = self.load_records()?;
        let mut report = PruneReport::default();

        let sizes_of = |recs: &[ImageRecord]| {
            let mut m = BTreeMap::new();
            for r in recs {
                for l in &r.layers {
                    m.insert(l.dir.clone(), l.unpacked_size);
                }
            }
            m
        };
        // Orphan layers (no record, no lease): from overwritten tags or crashes.
        let referenced = sizes_of(&recs);
        if let Ok(rd) = fs::read_dir(self.inner.root.join("l")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let rel = format!("l/{}", n.trim_end_matches(".json"));
                if !referenced.contains_key(&rel) && !protected.contains(&rel) {
                    self.remove_layer(&rel)?;
                }
            }
        }

        // Blobs (configs, manifests) no record references.
        if let Ok(rd) = fs::read_dir(self.inner.root.join("blobs/sha256")) {
            let used: BTreeSet<String> = recs
                .iter()
                .flat_map(|r| {
                    [
                        hex_of(&r.manifest_digest).to_string(),
                        hex_of(&r.config_digest).to_string(),
                    ]
                })
                .collect();
            for e in rd.flatten() {
                if !used.contains(&*e.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }

        recs.sort_by(|a, b| {
            a.last_used_ms
                .cmp(&b.last_used_ms)
                .then(a.name.cmp(&b.name))
        });
        let mut total: u64 = sizes_of(&recs).values().sum::<u64>() + self.blobs_bytes();
        let before = total;
        let mut i = 0;
        while total > target && i < recs.len() {
            let r = &recs[i];
            if keep == Some(r.name.as_str()) {
                i += 1;
                continue;
            }
            if leased.contains(hex_of(&r.manifest_digest)) {
                report.kept_in_use.push(r.name.clone());
                i += 1;
                continue;
            }
            let r = recs.remove(i);
            fs::remove_file(self.record_path(&r.name))
                .ctx(|| format!("removing record of {}", r.name))?;
            let still = sizes_of(&recs);
            for l in &r.layers {
                if !still.contains_key(&l.dir) && !protected.contains(&l.dir) {
                    self.remove_layer(&l.dir)?;
                }
            }
            for d in [&r.manifest_digest, &r.config_digest] {
                let used = recs
                    .iter()
                    .any(|o| o.manifest_digest == *d || o.config_digest == *d);
                if !used {
                    let _ = fs::remove_file(self.blob_path(d));
                }
            }
            total = still.values().sum::<u64>() + self.blobs_bytes();
            report.removed.push(r.name);
        }
        report.freed_bytes = before.saturating_sub(total);
        report.remaining_bytes = total;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::{add, listing, names, set_last_used, store, unique};
    use super::super::{hex_of, Store};
    use crate::error::Error;

    fn in_use(s: &Store, name: &str) -> bool {
        s.images()
            .unwrap()
            .into_iter()
            .find(|i| i.name == name)
            .unwrap()
            .in_use
    }

    #[tokio::test]
    async fn leases_are_counted_and_the_last_release_frees_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = add(&s, dir.path(), "localhost/a:1", vec![unique("a", 1000)]).await;
        assert!(!in_use(&s, "localhost/a:1"));
        let (l1, l2) = (s.lease(&a).unwrap(), s.lease(&a).unwrap());
        assert_eq!(l1.image(), "localhost/a:1");
        assert!(in_use(&s, "localhost/a:1"));
        drop(l1);
        assert!(
            in_use(&s, "localhost/a:1"),
            "the second lease still holds it"
        );
        assert!(matches!(s.remove("localhost/a:1"), Err(Error::InUse(n)) if n == "localhost/a:1"));
        let rep = s.prune(0).unwrap();
        assert!(rep.removed.is_empty());
        assert_eq!(rep.kept_in_use, ["localhost/a:1"]);
        assert!(a.layers.iter().all(|l| l.is_dir()));

        drop(l2);
        assert!(!in_use(&s, "localhost/a:1"));
        let rep = s.prune(0).unwrap();
        assert_eq!(rep.removed, ["localhost/a:1"]);
        assert!(rep.freed_bytes >= 1000, "{rep:?}");
        assert_eq!(rep.remaining_bytes, 0);
        for d in ["l", "leases", "blobs/sha256", "images"] {
            assert_eq!(listing(&s, d), Vec::<String>::new(), "{d}");
        }
        assert!(matches!(s.get("localhost/a:1"), Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn eviction_takes_the_least_recently_used_first_and_spares_leases_and_shared_layers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let shared = || unique("shared", 4000);
        let a = add(&s, d, "localhost/a:1", vec![unique("a", 1000)]).await;
        let b = add(&s, d, "localhost/b:1", vec![shared(), unique("b", 1000)]).await;
        let c = add(&s, d, "localhost/c:1", vec![shared(), unique("c", 1000)]).await;
        let lease_a = s.lease(&a).unwrap();
        // Used in this order: a (leased), b, c.
        for (n, ms) in [("a", 1000), ("b", 2000), ("c", 3000)] {
            set_last_used(&s, &format!("localhost/{n}:1"), ms);
        }
        // One image has to go: not a (leased), so b, the next oldest.
        let total = s.total_bytes().unwrap();
        let rep = s.prune(total - 1).unwrap();
        assert_eq!(rep.kept_in_use, ["localhost/a:1"]);
        assert_eq!(rep.removed, ["localhost/b:1"]);
        assert!(rep.remaining_bytes < total && rep.freed_bytes >= 1000);
        // b's own layer is gone; the one it shares with c is not.
        assert!(!b.layers[0].exists());
        assert_eq!(b.layers[1], c.layers[1]);
        assert!(c.layers.iter().all(|l| l.is_dir()));
        assert_eq!(names(&s), ["localhost/a:1", "localhost/c:1"]);

        drop(lease_a);
        let rep = s.prune(0).unwrap();
        assert_eq!(rep.removed, ["localhost/a:1", "localhost/c:1"]);
        assert_eq!(listing(&s, "l"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn equal_last_use_goes_by_name_and_keep_is_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        for n in ["z", "y", "x"] {
            let name = format!("localhost/{n}:1");
            add(&s, d, &name, vec![unique(n, 500)]).await;
            set_last_used(&s, &name, 5);
        }
        // What a pull does after installing y: evict down to the bound, y spared.
        let rep = s.prune_inner(0, Some("localhost/y:1")).unwrap();
        assert_eq!(rep.removed, ["localhost/x:1", "localhost/z:1"]);
        assert!(rep.remaining_bytes > 0);
        assert_eq!(names(&s), ["localhost/y:1"]);
    }

    #[tokio::test]
    async fn a_lease_keeps_the_layers_of_an_image_whose_tag_moved() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let old = add(&s, d, "localhost/app:1", vec![unique("old", 1000)]).await;
        let lease = s.lease(&old).unwrap();
        // The tag now names another image: no record uses the old layer.
        let new = add(&s, d, "localhost/app:1", vec![unique("new", 1000)]).await;
        assert_ne!(old.layers, new.layers);
        s.prune(u64::MAX).unwrap();
        assert!(old.layers[0].is_dir(), "a running job's layer was removed");
        drop(lease);
        s.prune(u64::MAX).unwrap();
        assert!(!old.layers[0].exists());
        assert!(new.layers[0].is_dir());
    }

    #[tokio::test]
    async fn a_lease_left_by_a_dead_process_protects_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let a = add(&s, d, "localhost/a:1", vec![unique("a", 1000)]).await;
        // A lease file nobody holds a lock on, naming a's layer and a layer
        // of no image.
        let stray = s.root().join("l/0123456789abcdef");
        fs::create_dir_all(&stray).unwrap();
        let lease_file = s.root().join("leases").join(hex_of(&a.manifest_digest));
        let dirs = ["l/0123456789abcdef".to_string()];
        fs::write(&lease_file, serde_json::to_vec(&dirs).unwrap()).unwrap();
        assert!(!in_use(&s, "localhost/a:1"));
        s.remove("localhost/a:1").unwrap();
        assert!(!lease_file.exists());
        assert!(!stray.exists());
        assert_eq!(listing(&s, "l"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn prune_collects_what_no_image_uses() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let a = add(&s, d, "localhost/a:1", vec![unique("a", 1000)]).await;
        let kept_blobs = listing(&s, "blobs/sha256");
        // Left by a crash: a layer with its metadata, a layer without, a blob.
        fs::create_dir_all(s.root().join("l/00000000000000aa/usr")).unwrap();
        fs::write(s.root().join("l/00000000000000aa.json"), b"{}").unwrap();
        fs::create_dir_all(s.root().join("l/00000000000000bb")).unwrap();
        fs::write(s.root().join("blobs/sha256/ffff"), b"orphan").unwrap();
        let rep = s.prune(u64::MAX).unwrap();
        assert!(rep.removed.is_empty());
        assert_eq!(listing(&s, "blobs/sha256"), kept_blobs);
        let layer = a.layers[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(listing(&s, "l"), [layer.clone(), format!("{layer}.json")]);
        assert_eq!(rep.remaining_bytes, s.total_bytes().unwrap());
    }

    #[tokio::test]
    async fn a_lease_needs_the_layers_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = add(&s, dir.path(), "localhost/a:1", vec![unique("a", 100)]).await;
        fs::remove_dir_all(&a.layers[0]).unwrap();
        assert!(matches!(s.lease(&a), Err(Error::NotFound(n)) if n == "localhost/a:1"));
        assert!(matches!(s.get("localhost/a:1"), Err(Error::NotFound(_))));
    }
}
