//! Pull bookkeeping that needs no registry: which error a failed manifest
//! GET becomes, blocked and unreachable registries, and installing from
//! local blobs (layer counts, size bounds, cached and colliding layers,
//! eviction after an install). The crate's `tests/pull.rs` pulls from a
//! real registry.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_client::errors::{OciDistributionError as E, OciEnvelope};
use test_support::{free_port, sha, TestImage};

use super::super::testing::{listing, names, opts, store, unique};
use super::super::{short_id, Image, Store, StoreOptions};
use super::{explain_manifest_error, Source};
use crate::error::Error;
use crate::manifest::Descriptor;
use crate::progress::{NoProgress, Progress, ProgressEvent};
use crate::reference::RegistriesConf;

fn envelope(code: &str) -> E {
    let envelope: OciEnvelope =
        serde_json::from_value(serde_json::json!({"errors": [{"code": code, "message": "m"}]}))
            .unwrap();
    E::RegistryError {
        envelope,
        url: "https://reg.example/v2/team/app/manifests/1".into(),
    }
}

#[test]
fn failed_manifest_gets_say_what_to_do() {
    let conf = RegistriesConf::default();
    let tagged = &conf.resolve("reg.example/team/app:1").unwrap()[0];
    let by_digest = &conf
        .resolve(&format!("reg.example/team/app@{}", sha(b"x")))
        .unwrap()[0];
    let says = |r, e: E, want: &str| {
        let m = explain_manifest_error(r, &e);
        assert!(m.contains(want), "{e:?}: {m}");
        m
    };
    let m = says(
        tagged,
        E::ImageManifestNotFoundError("x".into()),
        "image not found: reg.example has no team/app:1",
    );
    assert!(m.contains("check the name and the tag"));
    says(
        by_digest,
        envelope("MANIFEST_UNKNOWN"),
        &format!("has no team/app@{}", sha(b"x")),
    );
    says(
        tagged,
        envelope("NAME_UNKNOWN"),
        "repository not found: reg.example has no repository team/app",
    );
    says(tagged, envelope("DENIED"), "needs credentials");
    says(
        tagged,
        E::UnauthorizedError { url: "u".into() },
        "access denied to team/app:1",
    );
    // Anything else is passed on as it is.
    assert_eq!(
        explain_manifest_error(tagged, &E::SpecViolationError("odd".into())),
        "OCI distribution spec violation: odd"
    );
}

fn conf_store(dir: &Path, conf: &str) -> Store {
    fs::write(dir.join("registries.conf"), conf).unwrap();
    store(dir)
}

#[tokio::test]
async fn a_blocked_registry_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: a request would fail differently.
    let reg = format!("127.0.0.1:{}", free_port());
    let s = conf_store(
        dir.path(),
        &format!("[[registry]]\nlocation = \"{reg}\"\nblocked = true\n"),
    );
    match s.pull(&format!("{reg}/app:1"), &NoProgress).await {
        Err(Error::UnsupportedManifest { reason, .. }) => {
            assert!(reason.contains("is blocked in registries.conf"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_search_registry_is_tried_and_each_failure_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let s = conf_store(
        dir.path(),
        &format!("unqualified-search-registries = [\"{r1}\", \"{r2}\"]\n"),
    );
    match s.pull("app:1", &NoProgress).await {
        Err(Error::NoRegistryWorked {
            reference,
            attempts,
            transient,
        }) => {
            assert_eq!(reference, "app:1");
            // Nothing listens there: worth trying again later.
            assert!(transient);
            assert_eq!(attempts.len(), 2, "{attempts:?}");
            assert!(attempts[0].contains(&r1) && attempts[1].contains(&r2));
            assert!(attempts.iter().all(|a| a.contains("cannot reach")));
        }
        other => panic!("{other:?}"),
    }
    // A qualified name has one candidate: its own error, as it is.
    match s.pull(&format!("{r1}/app:1"), &NoProgress).await {
        Err(Error::Registry { registry, .. }) => assert_eq!(registry, r1),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&s), Vec::<String>::new());
}

/// `img`'s blobs as files in `dir`, by digest.
fn blobs(dir: &Path, img: &TestImage) -> HashMap<String, PathBuf> {
    let mut m = HashMap::new();
    for b in std::iter::once(&img.config).chain(img.layers.iter().map(|l| &l.blob)) {
        let d = sha(b);
        let p = dir.join(&d[7..]);
        fs::write(&p, b).unwrap();
        m.insert(d, p);
    }
    m
}

fn desc(blob: &[u8]) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: sha(blob),
        size: blob.len() as u64,
        platform: None,
        annotations: None,
    }
}

/// Install `img` as `name` from local files.
async fn install(
    s: &Store,
    dir: &Path,
    name: &str,
    img: &TestImage,
    progress: &dyn Progress,
) -> crate::Result<Image> {
    let files = blobs(dir, img);
    let layers: Vec<_> = img.layers.iter().map(|l| desc(&l.blob)).collect();
    let m = img.manifest(false);
    let r = s
        .install(
            name,
            &sha(&m),
            &m,
            &desc(&img.config),
            &layers,
            &Source::Local(&files),
            progress,
        )
        .await;
    r.map(|(image, _lease)| image)
}

#[tokio::test]
async fn a_config_that_lists_another_number_of_layers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut img = TestImage::new(vec![unique("a", 100)]);
    img.layers.push(unique("b", 100));
    match install(&s, dir.path(), "localhost/x:1", &img, &NoProgress).await {
        Err(Error::UnsupportedManifest { reason, .. }) => assert_eq!(
            reason,
            "the manifest has 2 layers but the config lists 1 diff ids"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&s), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_or_altered_blob_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store(d);
    let img = TestImage::new(vec![unique("a", 100)]);
    let mut files = blobs(d, &img);
    let layer = img.layers[0].digest();
    let path = files.remove(&layer).unwrap();
    let layers = [desc(&img.layers[0].blob)];
    let m = img.manifest(false);
    let go = |files: HashMap<String, PathBuf>| {
        let (s, m, layers, config) = (s.clone(), m.clone(), layers.clone(), desc(&img.config));
        async move {
            s.install(
                "localhost/x:1",
                &sha(&m),
                &m,
                &config,
                &layers,
                &Source::Local(&files),
                &NoProgress,
            )
            .await
            .map(|_| ())
        }
    };
    match go(files.clone()).await {
        Err(Error::Import { reason, .. }) => {
            assert!(reason.contains("is missing from the archive"))
        }
        other => panic!("{other:?}"),
    }
    // The file named by the layer's digest holds other bytes (as many).
    let mut altered = img.layers[0].blob.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 1;
    fs::write(&path, &altered).unwrap();
    files.insert(layer.clone(), path);
    match go(files).await {
        Err(Error::DigestMismatch { expected, .. }) => assert_eq!(expected, layer),
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(&s, "l"), Vec::<String>::new());
    assert_eq!(names(&s), Vec::<String>::new());
}

#[tokio::test]
async fn the_image_bound_counts_all_layers_and_never_exceeds_the_store_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The image bound is left at its default (far larger): the store's
    // bound caps it.
    let s = Store::open(
        d.join("store"),
        StoreOptions {
            max_bytes: 1500,
            ..opts(d)
        },
    )
    .unwrap();
    assert_eq!(s.image_bounds().max_bytes, 1500);
    // Each layer fits, the two together do not.
    let img = TestImage::new(vec![unique("a", 1000), unique("b", 1000)]);
    match install(&s, d, "localhost/big:1", &img, &NoProgress).await {
        Err(Error::TooLarge { image, .. }) => assert_eq!(image, "localhost/big:1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.get("localhost/big:1"), Err(Error::NotFound(_))));
    // Its layers belong to no image: the next prune takes them.
    assert_eq!(listing(&s, "l").len(), 4);
    s.prune(u64::MAX).unwrap();
    assert_eq!(listing(&s, "l"), Vec::<String>::new());
}

#[tokio::test]
async fn an_install_over_the_bound_evicts_others_but_never_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Store::open(
        d.join("store"),
        StoreOptions {
            max_bytes: 1500,
            ..opts(d)
        },
    )
    .unwrap();
    for n in ["a", "b"] {
        let img = TestImage::new(vec![unique(n, 1000)]);
        install(&s, d, &format!("localhost/{n}:1"), &img, &NoProgress)
            .await
            .unwrap();
        // Alone, each image is above the bound (its blobs count too).
        assert!(s.total_bytes().unwrap() > 1500);
        assert_eq!(names(&s), [format!("localhost/{n}:1")]);
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Progress for Events {
    fn event(&self, ev: &ProgressEvent) {
        let kind = match ev {
            ProgressEvent::LayerCached { .. } => "cached",
            ProgressEvent::LayerUnpacked { .. } => "unpacked",
            ProgressEvent::ImageReady { .. } => "ready",
            _ => "other",
        };
        self.0.lock().unwrap().push(kind.into());
    }
}

#[tokio::test]
async fn a_layer_is_unpacked_once_and_then_found_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store(d);
    let img = TestImage::new(vec![unique("a", 100)]);
    let first = Events::default();
    let a = install(&s, d, "localhost/a:1", &img, &first).await.unwrap();
    assert_eq!(*first.0.lock().unwrap(), ["unpacked", "ready"]);
    let again = Events::default();
    let b = install(&s, d, "localhost/b:1", &img, &again).await.unwrap();
    assert_eq!(*again.0.lock().unwrap(), ["cached", "ready"]);
    assert_eq!(a.layers, b.layers);
}

#[tokio::test]
async fn a_layer_directory_of_another_diff_id_is_never_taken() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store(d);
    let img = TestImage::new(vec![unique("a", 100)]);
    // Same 16 hex digits, another diff id (a prefix collision), or no
    // metadata at all (a crash between the two renames).
    let diff_id = img.layers[0].diff_id.clone();
    let dir_of = s.root().join("l").join(short_id(&diff_id));
    fs::create_dir_all(&dir_of).unwrap();
    let other = format!("{}{}", &diff_id[..diff_id.len() - 1], "0");
    let meta = serde_json::json!({"diff_id": other, "unpacked_size": 1});
    for written in [Some(meta), None] {
        let _ = fs::remove_file(dir_of.with_extension("json"));
        if let Some(m) = &written {
            fs::write(dir_of.with_extension("json"), m.to_string()).unwrap();
        }
        match install(&s, d, "localhost/a:1", &img, &NoProgress).await {
            Err(Error::Io { context, .. }) => {
                assert!(context.contains("exists for another diff id"), "{context}")
            }
            other => panic!("{other:?}"),
        }
    }
}
