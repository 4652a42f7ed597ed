//! Imports without a registry: OCI image layouts (a directory, or a tarball
//! of one) and `docker save` archives. Every blob is verified, then the
//! image is installed as a pulled one is.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::pull::Source;
use super::{hex_of, sha256_hex, Cleanup, Image, Store};
use crate::archive_blob;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, Descriptor, Manifest};
use crate::progress::Progress;

#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn import_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A path inside an archive directory, refusing `..` and absolute paths.
fn inside(root: &Path, rel: &str, archive: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(import_err(
            archive,
            format!("path {rel:?} leaves the archive"),
        ));
    }
    Ok(root.join(p))
}

/// sha256 of the regular file `p` (checked inside the archive first), of `size` bytes.
fn file_sha256(p: &Path, size: u64) -> Result<String> {
    let desc = Descriptor {
        media_type: String::new(),
        digest: String::new(),
        size,
        platform: None,
        annotations: None,
    };
    let mut f = archive_blob::open_local(p, &desc)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).ctx(|| format!("reading {}", p.display()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

impl Store {
    /// Import images without a registry, from an OCI image layout (a
    /// directory, or a tarball of one: `oci-archive`) or a `docker save`
    /// archive (directory or tarball, optionally gzip-compressed). Every blob is
    /// verified against its digest (for docker-save layers: against the
    /// config's diff ids).
    ///
    /// Names come from the archive (`RepoTags`; the
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotations, a bare tag there meaning `localhost/<file stem>:<tag>`),
    /// or from `name`, which is required when the archive names nothing and
    /// refused when it holds several images.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let meta = fs::metadata(path).map_err(|e| import_err(path, e.to_string()))?;
        let unpacker = &*self.inner.opts.unpacker;
        let mut guard = Cleanup {
            path: None,
            unpacker,
        };
        let dir = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let d = self.inner.scratch.join(format!("import-{}", self.next()));
            guard.path = Some(d.clone());
            let (src, dst) = (path.to_path_buf(), d.clone());
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let mut r = io::BufReader::new(fs::File::open(&src)?);
                let head = io::BufRead::fill_buf(&mut r)?.to_vec();
                let rd: Box<dyn Read> = match crate::unpack::detect_compression(&head) {
                    crate::unpack::Compression::Gzip => {
                        Box::new(flate2::bufread::MultiGzDecoder::new(r))
                    }
                    crate::unpack::Compression::Zstd => {
                        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
                    }
                    crate::unpack::Compression::None => Box::new(r),
                };
                fs::create_dir_all(&dst)?;
                // tar's own unpack refuses `..` and absolute paths.
                tar::Archive::new(rd).unpack(&dst)
            })
            .await
            .map_err(|e| Error::io("import task", io::Error::other(e)))?
            .map_err(|e| import_err(path, format!("not a readable tar archive: {e}")))?;
            d
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches(".tar").to_lowercase())
            .unwrap_or_else(|| "import".into());
        let stem: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .to_string();
        if dir.join("manifest.json").is_file() {
            self.import_docker_save(path, &dir, name, progress).await
        } else if dir.join("index.json").is_file() {
            self.import_oci_layout(path, &dir, name, &stem, progress)
                .await
        } else {
            Err(import_err(
                path,
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            ))
        }
    }

    fn qualify_name(&self, archive: &Path, n: &str) -> Result<String> {
        let c = self
            .inner
            .conf
            .resolve(n)
            .map_err(|e| import_err(archive, e.to_string()))?;
        Ok(c[0].canonical())
    }

    async fn import_oci_layout(
        &self,
        archive: &Path,
        dir: &Path,
        name: Option<&str>,
        stem: &str,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let rel = |d: &str| format!("blobs/sha256/{}", hex_of(d));
        let read_verified = |desc: &Descriptor| -> Result<Vec<u8>> {
            let d = &desc.digest;
            let b = archive_blob::read_in(
                dir,
                &rel(d),
                archive,
                Some(desc.size),
                archive_blob::MAX_JSON_BYTES,
            )?;
            let actual = format!("sha256:{}", sha256_hex(&b));
            if actual != *d {
                return Err(Error::DigestMismatch {
                    what: format!("{}: blob {d}", archive.display()),
                    expected: d.to_string(),
                    actual,
                });
            }
            Ok(b)
        };
        let idx = archive_blob::read_in(
            dir,
            "index.json",
            archive,
            None,
            archive_blob::MAX_JSON_BYTES,
        )?;
        let label = archive.display().to_string();
        let Manifest::Index(entries) = manifest::parse_manifest(&label, &idx)? else {
            return Err(import_err(archive, "index.json is not an image index"));
        };
        if entries.is_empty() {
            return Err(import_err(archive, "index.json lists no image"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(import_err(
                archive,
                format!(
                    "it holds {} images; a single name cannot be given to all",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in &entries {
            let ann = e.annotations.clone().unwrap_or_default();
            let n = match name {
                Some(n) => self.qualify_name(archive, n)?,
                None => match ann
                    .get("io.containerd.image.name")
                    .or_else(|| ann.get("org.opencontainers.image.ref.name"))
                {
                    Some(n) if n.contains(['/', ':', '@']) => self.qualify_name(archive, n)?,
                    Some(tag) => self.qualify_name(archive, &format!("localhost/{stem}:{tag}"))?,
                    None => {
                        return Err(import_err(
                            archive,
                            "the image has no name annotation; give it a name",
                        ))
                    }
                },
            };
            let mut mbytes = read_verified(e)?;
            let mut mdigest = e.digest.clone();
            let mut m = manifest::parse_manifest(&n, &mbytes)?;
            if let Manifest::Index(sub) = &m {
                let (os, arch) = &self.inner.opts.platform;
                let chosen = manifest::choose_platform(&n, sub, os, arch)?;
                mdigest = chosen.digest.clone();
                mbytes = read_verified(chosen)?;
                m = manifest::parse_manifest(&n, &mbytes)?;
            }
            let Manifest::Image { config, layers } = m else {
                return Err(import_err(
                    archive,
                    "nested image indexes are not supported",
                ));
            };
            let mut files = HashMap::new();
            for d in std::iter::once(&config).chain(layers.iter()) {
                // A regular file inside the archive, of its declared size:
                // checked here, and again (size, type) when it is read.
                let (_, size) = archive_blob::open_in(dir, &rel(&d.digest), archive)?;
                if size != d.size {
                    return Err(import_err(
                        archive,
                        format!(
                            "blob {} holds {size} bytes but its descriptor declares {}",
                            d.digest, d.size
                        ),
                    ));
                }
                files.insert(d.digest.clone(), dir.join(rel(&d.digest)));
            }
            out.push(
                self.install(
                    &n,
                    &mdigest,
                    &mbytes,
                    &config,
                    &layers,
                    &Source::Local(&files),
                    progress,
                )
                .await?
                .0,
            );
        }
        Ok(out)
    }

    async fn import_docker_save(
        &self,
        archive: &Path,
        dir: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Vec<Image>> {
        let text = archive_blob::read_in(
            dir,
            "manifest.json",
            archive,
            None,
            archive_blob::MAX_JSON_BYTES,
        )?;
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&text)
            .map_err(|e| import_err(archive, format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(import_err(archive, "manifest.json lists no image"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(import_err(
                archive,
                format!(
                    "it holds {} images; a single name cannot be given to all",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in entries {
            let names: Vec<String> = match name {
                Some(n) => vec![n.to_string()],
                None => e.repo_tags.clone().unwrap_or_default(),
            };
            if names.is_empty() {
                return Err(import_err(
                    archive,
                    "the image has no RepoTags; give it a name",
                ));
            }
            let cpath = inside(dir, &e.config, archive)?;
            let cbytes =
                archive_blob::read_in(dir, &e.config, archive, None, archive_blob::MAX_JSON_BYTES)?;
            let cdigest = format!("sha256:{}", sha256_hex(&cbytes));
            let (_, diff_ids) = manifest::parse_config(&archive.display().to_string(), &cbytes)?;
            if diff_ids.len() != e.layers.len() {
                return Err(import_err(
                    archive,
                    "config diff_ids and Layers differ in number",
                ));
            }
            let mut files = HashMap::new();
            files.insert(cdigest.clone(), cpath);
            let mut layers = Vec::new();
            for (l, diff_id) in e.layers.iter().zip(&diff_ids) {
                let p = inside(dir, l, archive)?;
                let (mut f, size) = archive_blob::open_in(dir, l, archive)?;
                let mut head = [0u8; 4];
                let n = f
                    .read(&mut head)
                    .map_err(|err| import_err(archive, format!("{l}: {err}")))?;
                let comp = crate::unpack::detect_compression(&head[..n]);
                // An uncompressed layer's digest is its diff id (checked while hashing).
                let digest = if comp == crate::unpack::Compression::None {
                    diff_id.clone()
                } else {
                    file_sha256(&p, size)?
                };
                files.insert(digest.clone(), p);
                layers.push(Descriptor {
                    media_type: String::new(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            let config = Descriptor {
                media_type: "application/vnd.docker.container.image.v1+json".into(),
                digest: cdigest,
                size: cbytes.len() as u64,
                platform: None,
                annotations: None,
            };
            // Synthesise a manifest so the record looks like a pulled image.
            let mbytes = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": manifest::OCI_MANIFEST.replace("manifest", "config"), "digest": config.digest, "size": config.size},
                "layers": layers.iter().map(|l| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            }))
            .map_err(|err| Error::io("encoding manifest", io::Error::other(err)))?;
            let mdigest = format!("sha256:{}", sha256_hex(&mbytes));
            for n in names {
                let n = self.qualify_name(archive, &n)?;
                out.push(
                    self.install(
                        &n,
                        &mdigest,
                        &mbytes,
                        &config,
                        &layers,
                        &Source::Local(&files),
                        progress,
                    )
                    .await?
                    .0,
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use test_support::{layer, tar_dir, write_oci_layout, Comp, Layer, TestImage};

    use super::super::testing::{layout_dir, names, store, unique};
    use super::inside;
    use crate::error::Error;
    use crate::progress::NoProgress;
    use crate::Store;

    /// The reason of an [`Error::Import`], or a panic.
    fn reason(r: crate::Result<Vec<crate::Image>>) -> String {
        match r {
            Err(Error::Import { reason, .. }) => reason,
            other => panic!("expected an import error, got {other:?}"),
        }
    }

    async fn import(s: &Store, p: &Path, name: Option<&str>) -> crate::Result<Vec<crate::Image>> {
        s.import(p, name, &NoProgress).await
    }

    /// Change `index.json` of the layout at `dir` with `f`.
    fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let p = dir.join("index.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn archive_paths_stay_inside() {
        let (root, a) = (Path::new("/x"), Path::new("a.tar"));
        assert_eq!(inside(root, "a/b", a).unwrap(), Path::new("/x/a/b"));
        assert_eq!(inside(root, "./a", a).unwrap(), Path::new("/x/a"));
        for bad in ["../a", "a/../../b", "a/../b", "/etc/passwd", ".."] {
            match inside(root, bad, a) {
                Err(Error::Import { reason, .. }) => {
                    assert!(reason.contains("leaves the archive"), "{bad}: {reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn what_is_not_an_archive_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(reason(import(&s, &empty, None).await).contains("neither an OCI image layout"));
        let junk = dir.path().join("junk.tar");
        fs::write(&junk, vec![0xabu8; 5000]).unwrap();
        assert!(reason(import(&s, &junk, None).await).contains("not a readable tar archive"));
        let missing = dir.path().join("missing.tar");
        assert!(matches!(
            import(&s, &missing, None).await,
            Err(Error::Import { .. })
        ));
        assert_eq!(names(&s), Vec::<String>::new());
        // The failed unpack of the tarball left nothing in the scratch.
        for e in fs::read_dir(s.root().join("tmp")).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                assert_eq!(fs::read_dir(e.path()).unwrap().count(), 0);
            }
        }
    }

    #[tokio::test]
    async fn oci_names_come_from_annotations_the_file_name_or_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let img = || TestImage::new(vec![unique("n", 100)]);
        // A bare tag: localhost/<file stem>:<tag>, the stem made a valid name.
        let layout = d.join("src");
        write_oci_layout(&layout, &img(), "v1");
        let archive = d.join("My_Image.tar");
        tar_dir(&layout, &archive);
        let got = import(&s, &archive, None).await.unwrap();
        assert_eq!(got[0].name, "localhost/my-image:v1");
        // A full reference is taken as it is; containerd's annotation first.
        let l2 = layout_dir(d);
        write_oci_layout(&l2, &img(), "example.org/team/app:2");
        assert_eq!(
            import(&s, &l2, None).await.unwrap()[0].name,
            "example.org/team/app:2"
        );
        edit_index(&l2, |v| {
            v["manifests"][0]["annotations"]["io.containerd.image.name"] =
                "example.org/team/app:3".into()
        });
        assert_eq!(
            import(&s, &l2, None).await.unwrap()[0].name,
            "example.org/team/app:3"
        );
        // The caller's name wins, qualified like a pull's.
        assert_eq!(
            import(&s, &l2, Some("mine:1")).await.unwrap()[0].name,
            "docker.io/library/mine:1"
        );
        // No annotation and no name: refused.
        edit_index(&l2, |v| {
            v["manifests"][0]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        });
        assert!(reason(import(&s, &l2, None).await).contains("give it a name"));
    }

    #[tokio::test]
    async fn oci_indexes_that_hold_no_image_or_several_for_one_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let l = layout_dir(d);
        write_oci_layout(&l, &TestImage::new(vec![unique("n", 100)]), "v1");
        edit_index(&l, |v| {
            let m = v["manifests"][0].clone();
            v["manifests"] = serde_json::json!([m.clone(), m]);
        });
        assert!(reason(import(&s, &l, Some("x:1")).await).contains("it holds 2 images"));
        edit_index(&l, |v| v["manifests"] = serde_json::json!([]));
        assert!(reason(import(&s, &l, Some("x:1")).await).contains("lists no image"));
        assert_eq!(names(&s), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_oci_blob_of_another_size_than_declared_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let l = layout_dir(d);
        let img = TestImage::new(vec![unique("n", 100)]);
        write_oci_layout(&l, &img, "v1");
        let blob = l.join("blobs/sha256").join(&img.layers[0].digest()[7..]);
        let mut b = fs::read(&blob).unwrap();
        b.extend_from_slice(b"trailing");
        fs::write(&blob, b).unwrap();
        let r = reason(import(&s, &l, None).await);
        assert!(r.contains("but its descriptor declares"), "{r}");
        assert_eq!(names(&s), Vec::<String>::new());
    }

    /// A `docker save` tree at `dir`: `Config` and `Layers` as given.
    fn docker_save(dir: &Path, img: &TestImage, tags: Option<&[&str]>, layer_names: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("config.json"), &img.config).unwrap();
        for (l, n) in img.layers.iter().zip(layer_names) {
            let p = dir.join(n);
            if let Some(parent) = p.parent().filter(|p| p.starts_with(dir)) {
                fs::create_dir_all(parent).unwrap();
                fs::write(&p, &l.blob).unwrap();
            }
        }
        let mut e = serde_json::json!({"Config": "config.json", "Layers": layer_names});
        if let Some(t) = tags {
            e["RepoTags"] = t.into();
        }
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&serde_json::json!([e])).unwrap(),
        )
        .unwrap();
    }

    fn plain(tag: &str) -> Layer {
        layer(&[test_support::file(tag, tag.as_bytes())], Comp::None)
    }

    #[tokio::test]
    async fn docker_save_gives_one_image_per_tag_from_plain_or_compressed_layers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let img = TestImage::new(vec![plain("base"), unique("top", 100)]);
        let ds = d.join("ds");
        docker_save(
            &ds,
            &img,
            Some(&["localhost/ds:1", "localhost/ds:latest"]),
            &["a/layer.tar", "b/layer.tar"],
        );
        let got = import(&s, &ds, None).await.unwrap();
        let n: Vec<_> = got.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(n, ["localhost/ds:1", "localhost/ds:latest"]);
        assert_eq!(got[0].manifest_digest, got[1].manifest_digest);
        assert_eq!(got[0].layers.len(), 2);
        assert!(got[0].layers[1].join("base").is_file());
        assert!(got[0].layers[0].join("top").is_file());
    }

    #[tokio::test]
    async fn docker_save_paths_leaving_the_archive_and_nameless_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = store(d);
        let img = TestImage::new(vec![plain("base")]);
        fs::write(d.join("outside.tar"), &img.layers[0].blob).unwrap();
        for (i, bad) in ["../outside.tar", "/etc/passwd"].into_iter().enumerate() {
            let ds = d.join(format!("bad{i}"));
            docker_save(&ds, &img, Some(&["localhost/ds:1"]), &[bad]);
            let r = reason(import(&s, &ds, None).await);
            assert!(r.contains("leaves the archive"), "{bad}: {r}");
        }
        let ds = d.join("nameless");
        docker_save(&ds, &img, None, &["l.tar"]);
        assert!(reason(import(&s, &ds, None).await).contains("no RepoTags"));
        assert_eq!(
            import(&s, &ds, Some("localhost/named:1")).await.unwrap()[0].name,
            "localhost/named:1"
        );
        // The config lists one diff id, the manifest two layers.
        let ds = d.join("miscounted");
        let two = TestImage::new(vec![plain("base"), plain("other")]);
        docker_save(&ds, &two, Some(&["localhost/m:1"]), &["1.tar", "2.tar"]);
        fs::write(ds.join("config.json"), &img.config).unwrap();
        assert!(reason(import(&s, &ds, None).await).contains("differ in number"));
        assert_eq!(names(&s), ["localhost/named:1"]);
    }
}
