//! Pulling images from a registry into the store, and installing an
//! image's blobs and layers from any [`Source`] (a registry, or the files of
//! an archive being imported).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{
    now_ms, sha256_hex, write_atomic, Cleanup, Image, ImageRecord, LayerMeta, LayerRecord, Lease,
    Store,
};
use crate::auth;
use crate::error::{Error, IoContext, Result};
use crate::lock;
use crate::manifest::{self, Descriptor, Manifest};
use crate::progress::{Progress, ProgressEvent};
use crate::reference::ImageRef;
use crate::unpack::UnpackOptions;

/// A pipe from the download to the unpacker: `(read end, write end)`, both
/// close-on-exec (the unpacker may hand the read end to a helper process),
/// with a 1 MiB buffer when the system allows it.
fn layer_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: F_SETPIPE_SZ only changes the buffer size of a pipe we own.
    unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((rx, tx))
}
/// Where blobs come from.
pub(super) enum Source<'a> {
    Registry {
        client: &'a oci_client::Client,
        oref: &'a oci_client::Reference,
    },
    /// Local files by digest (an OCI layout or a docker-save archive).
    Local(&'a HashMap<String, PathBuf>),
}
impl Store {
    // ---------------------------------------------------------------- pull

    /// Pull `reference` (docker/podman syntax) into the store and return it.
    /// Unqualified names are tried against each search registry in turn.
    ///
    /// A job that is going to run the image should use [`Store::pull_and_lease`]
    /// instead, so that no concurrent eviction can remove it in between.
    pub async fn pull(&self, reference: &str, progress: &dyn Progress) -> Result<Image> {
        Ok(self.pull_and_lease(reference, progress).await?.0)
    }

    /// [`Store::pull`], returning the image already leased (see [`Store::lease`]).
    pub async fn pull_and_lease(
        &self,
        reference: &str,
        progress: &dyn Progress,
    ) -> Result<(Image, Lease)> {
        let candidates = self.inner.conf.resolve(reference)?;
        let mut attempts = Vec::new();
        let mut transient = false;
        let n = candidates.len();
        for c in candidates {
            match self.pull_one(&c, progress).await {
                Ok(i) => return Ok(i),
                // Only "could not get it from here" moves on to the next registry;
                // integrity and safety errors stop at once.
                Err(e @ Error::Registry { .. }) if n > 1 => {
                    transient |= e.is_transient();
                    attempts.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoRegistryWorked {
            reference: reference.to_string(),
            attempts,
            transient,
        })
    }

    fn client_for(&self, r: &ImageRef) -> oci_client::Client {
        let insecure = self.inner.conf.is_insecure(r);
        let protocol = if insecure {
            oci_client::client::ClientProtocol::HttpsExcept(vec![r.registry.clone()])
        } else {
            oci_client::client::ClientProtocol::Https
        };
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol,
            accept_invalid_certificates: insecure && !r.is_loopback_registry(),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        })
    }

    async fn pull_one(&self, r: &ImageRef, progress: &dyn Progress) -> Result<(Image, Lease)> {
        let name = r.canonical();
        let reg_err =
            |e: &oci_client::errors::OciDistributionError, reason: String| Error::Registry {
                reference: name.clone(),
                registry: r.registry.clone(),
                reason,
                transient: crate::error::oci_transient(e),
            };
        if self.inner.conf.is_blocked(r) {
            return Err(Error::UnsupportedManifest {
                reference: name.clone(),
                reason: format!("registry {} is blocked in registries.conf", r.registry),
            });
        }
        let client = self.client_for(r);
        let creds = auth::lookup(&self.inner.opts.auth_files, r)?;
        let auth = match creds {
            Some(c) => oci_client::secrets::RegistryAuth::Basic(c.username, c.password),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let oref = r.to_oci();
        let (bytes, _) = client
            .pull_manifest_raw(&oref, &auth, manifest::ACCEPT)
            .await
            .map_err(|e| reg_err(&e, explain_manifest_error(r, &e)))?;
        let mut digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: format!("{name}: manifest"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let mut bytes = bytes.to_vec();
        let mut m = manifest::parse_manifest(&name, &bytes)?;
        if let Manifest::Index(entries) = &m {
            let (os, arch) = &self.inner.opts.platform;
            let chosen = manifest::choose_platform(&name, entries, os, arch)?.clone();
            let cref = oref.clone_with_digest(chosen.digest.clone());
            let (b, _) = client
                .pull_manifest_raw(&cref, &auth, manifest::ACCEPT)
                .await
                .map_err(|e| reg_err(&e, e.to_string()))?;
            let actual = format!("sha256:{}", sha256_hex(&b));
            if actual != chosen.digest {
                return Err(Error::DigestMismatch {
                    what: format!("{name}: manifest for {os}/{arch}"),
                    expected: chosen.digest,
                    actual,
                });
            }
            bytes = b.to_vec();
            digest = actual;
            m = manifest::parse_manifest(&name, &bytes)?;
        }
        let Manifest::Image { config, layers } = m else {
            return Err(Error::UnsupportedManifest {
                reference: name,
                reason: "a manifest list points to another manifest list".into(),
            });
        };
        // Before any blob (the config included) is fetched.
        crate::size_cap::check(&name, &layers, self.inner.opts.max_image_size)?;
        let source = Source::Registry {
            client: &client,
            oref: &oref,
        };
        self.install(&name, &digest, &bytes, &config, &layers, &source, progress)
            .await
    }

    /// Store manifest + config + layers and write the index record. A full
    /// file system is reported as [`Error::NoSpace`], with what the image
    /// needs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn install(
        &self,
        name: &str,
        manifest_digest: &str,
        manifest_bytes: &[u8],
        config: &Descriptor,
        layers: &[Descriptor],
        source: &Source<'_>,
        progress: &dyn Progress,
    ) -> Result<(Image, Lease)> {
        let installed = async {
            // Pulls hold the GC lock shared so that eviction never removes a layer
            // between its unpacking and the record that references it.
            let gc = lock::shared_async(self.gc_lock_path()).await?;
            let config_path = self.ensure_blob(name, source, config, progress).await?;
            let config_bytes =
                fs::read(&config_path).ctx(|| format!("reading {}", config_path.display()))?;
            let (cfg, diff_ids) = manifest::parse_config(name, &config_bytes)?;
            if diff_ids.len() != layers.len() {
                return Err(Error::UnsupportedManifest {
                    reference: name.to_string(),
                    reason: format!(
                        "the manifest has {} layers but the config lists {} diff ids",
                        layers.len(),
                        diff_ids.len()
                    ),
                });
            }
            // The futures are built before streaming them: a closure mapping
            // borrowed items to futures inside the stream makes the whole pull
            // future not provably `Send` (a rustc limitation with higher-ranked
            // lifetimes), and callers spawn it on a multi-threaded runtime.
            let fetches: Vec<_> = layers
                .iter()
                .zip(&diff_ids)
                .map(|(l, d)| self.ensure_layer(name, source, l, d, progress))
                .collect();
            let records: Vec<LayerRecord> = futures_util::stream::iter(fetches)
                .buffered(self.inner.opts.max_concurrent_downloads.max(1))
                .try_collect()
                .await?;
            let mpath = self.blob_path(manifest_digest);
            if !mpath.exists() {
                write_atomic(&self.inner.scratch, self.next(), &mpath, manifest_bytes)?;
            }
            let now = now_ms();
            let (bytes, entries) = records.iter().fold((0u64, 0u64), |(b, e), l| {
                (
                    b.saturating_add(l.unpacked_size),
                    e.saturating_add(l.entries),
                )
            });
            if let Some(reason) = self.image_bounds().exceeded(bytes, entries) {
                // Its layers are referenced by no image: the next prune removes them.
                return Err(Error::TooLarge {
                    image: name.to_string(),
                    reason,
                });
            }
            let rec = ImageRecord {
                name: name.to_string(),
                manifest_digest: manifest_digest.to_string(),
                config_digest: config.digest.clone(),
                size: records.iter().map(|l| l.unpacked_size).sum(),
                entries: records.iter().map(|l| l.entries).sum(),
                layers: records,
                pulled_at_ms: now,
                last_used_ms: now,
            };
            self.write_record(&rec)?;
            let image = self.image_from_record(&rec, Some(cfg))?;
            // Lease before letting eviction run again.
            let lease = self.lease(&image)?;
            drop(gc);
            progress.event(&ProgressEvent::ImageReady {
                image: name.to_string(),
                digest: manifest_digest.to_string(),
            });
            // Keep the store under its bound (never evicting what we just pulled).
            let total = self.total_bytes()?;
            if total > self.inner.opts.max_bytes {
                let this = self.clone();
                let keep = name.to_string();
                let max = self.inner.opts.max_bytes;
                let rep = tokio::task::spawn_blocking(move || this.prune_inner(max, Some(&keep)))
                    .await
                    .map_err(|e| Error::io("prune task", io::Error::other(e)))??;
                if !rep.removed.is_empty() {
                    tracing::info!(removed = ?rep.removed, freed = rep.freed_bytes, "evicted images to stay under the size bound");
                }
            }
            Ok::<_, Error>((image, lease))
        }
        .await;
        installed.map_err(|e| {
            if !e.is_no_space() {
                return e;
            }
            Error::NoSpace {
                image: name.to_string(),
                store: self.inner.root.clone(),
                needed: space_needed(layers),
                free: self.free_bytes(),
                source: Box::new(e),
            }
        })
    }
    /// Fetch a blob to `dest` (a new file), verifying digest and size as it streams.
    async fn fetch(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        match source {
            Source::Local(files) => {
                let src = files.get(&desc.digest).ok_or_else(|| Error::Import {
                    path: PathBuf::from(image),
                    reason: format!("blob {} is missing from the archive", desc.digest),
                })?;
                let mut f = crate::archive_blob::open_local(src, desc)?;
                let mut out =
                    fs::File::create(dest).ctx(|| format!("creating {}", dest.display()))?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f
                        .read(&mut buf)
                        .ctx(|| format!("reading {}", src.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .ctx(|| format!("writing {}", dest.display()))?;
                }
                out.sync_all()
                    .ctx(|| format!("writing {}", dest.display()))?;
                let actual = format!("sha256:{}", hex::encode(h.finalize()));
                if actual != desc.digest {
                    return Err(Error::DigestMismatch {
                        what: format!("{image}: blob {}", desc.digest),
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                Ok(())
            }
            Source::Registry { client, oref } => {
                let mut out = tokio::fs::File::create(dest)
                    .await
                    .ctx(|| format!("creating {}", dest.display()))?;
                let what = dest.display().to_string();
                self.download(image, client, oref, desc, &mut out, &what, progress)
                    .await?;
                out.sync_all()
                    .await
                    .ctx(|| format!("writing {}", dest.display()))
            }
        }
    }

    /// Stream a blob from the registry into `out` (`what` names it in
    /// errors), counting its size and hashing it as it goes. Whatever went
    /// to `out` is only to be trusted once this returns `Ok`.
    #[allow(clippy::too_many_arguments)]
    async fn download<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        image: &str,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        desc: &Descriptor,
        out: &mut W,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mismatch = |actual: String| Error::DigestMismatch {
            what: format!("{image}: blob {}", desc.digest),
            expected: desc.digest.clone(),
            actual,
        };
        progress.event(&ProgressEvent::DownloadStarted {
            image: image.to_string(),
            digest: desc.digest.clone(),
            total: desc.size,
        });
        let reg_err = |e: &dyn std::fmt::Display, transient: bool| Error::Registry {
            reference: image.to_string(),
            registry: oref.registry().to_string(),
            reason: format!("blob {}: {e}", desc.digest),
            transient,
        };
        let odesc = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let mut stream = client
            .pull_blob_stream(oref, &odesc)
            .await
            .map_err(|e| reg_err(&e, crate::error::oci_transient(&e)))?;
        let mut h = Sha256::new();
        let mut done = 0u64;
        let mut stream_err = None;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    stream_err = Some(e);
                    break;
                }
            };
            done += chunk.len() as u64;
            if desc.size > 0 && done > desc.size {
                return Err(reg_err(
                    &format!(
                        "the registry sent more than the {} bytes the manifest promised",
                        desc.size
                    ),
                    false,
                ));
            }
            h.update(&chunk);
            out.write_all(&chunk)
                .await
                .ctx(|| format!("writing {what}"))?;
            progress.event(&ProgressEvent::Downloaded {
                digest: desc.digest.clone(),
                done,
                total: desc.size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if let Some(e) = stream_err {
            // oci-client verifies too and fails the stream at its end; report
            // our own finding when the bytes are all there but wrong.
            if done == desc.size && actual != desc.digest {
                return Err(mismatch(actual));
            }
            // The body was cut short (or failed on the way): may pass.
            return Err(reg_err(&e, true));
        }
        if actual != desc.digest {
            return Err(mismatch(actual));
        }
        out.flush().await.ctx(|| format!("writing {what}"))?;
        progress.event(&ProgressEvent::DownloadFinished {
            digest: desc.digest.clone(),
        });
        Ok(())
    }

    /// Keep a (small) blob in `blobs/sha256/`: configs and manifests.
    async fn ensure_blob(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        let path = self.blob_path(&desc.digest);
        if path.exists() {
            return Ok(path);
        }
        let _l = lock::exclusive_async(self.lock_path("b", &desc.digest)).await?;
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.inner.scratch.join(format!("blob-{}", self.next()));
        let mut guard = Cleanup {
            path: Some(tmp.clone()),
            unpacker: &*self.inner.opts.unpacker,
        };
        self.fetch(image, source, desc, &tmp, progress).await?;
        fs::rename(&tmp, &path).ctx(|| format!("renaming into {}", path.display()))?;
        guard.path = None;
        Ok(path)
    }
    fn read_layer_meta(&self, diff_id: &str) -> Option<LayerMeta> {
        let (_, dir) = self.layer_dir(diff_id);
        let meta = dir.with_extension("json");
        let m: LayerMeta = serde_json::from_slice(&fs::read(meta).ok()?).ok()?;
        (m.diff_id == diff_id && dir.is_dir()).then_some(m)
    }

    /// Make sure the layer `diff_id` is unpacked in `l/`, downloading it if needed.
    async fn ensure_layer(
        &self,
        image: &str,
        source: &Source<'_>,
        desc: &Descriptor,
        diff_id: &str,
        progress: &dyn Progress,
    ) -> Result<LayerRecord> {
        let (rel, dir) = self.layer_dir(diff_id);
        let record = |unpacked_size, entries| LayerRecord {
            digest: desc.digest.clone(),
            diff_id: diff_id.to_string(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            unpacked_size,
            entries,
            dir: rel.clone(),
        };
        let wants_digest = self.inner.opts.record_tree_digests;
        if let Some(m) = self.read_layer_meta(diff_id) {
            if !wants_digest || m.tree_digest.is_some() {
                progress.event(&ProgressEvent::LayerCached {
                    digest: desc.digest.clone(),
                });
                return Ok(record(m.unpacked_size, m.entries));
            }
        }
        let _l = lock::exclusive_async(self.lock_path("l", diff_id)).await?;
        if let Some(mut m) = self.read_layer_meta(diff_id) {
            if wants_digest && m.tree_digest.is_none() {
                // Unpacked before this store recorded tree digests.
                m.tree_digest = Some(self.tree_digest_of(&dir).await?);
                self.write_layer_meta(&dir, &m)?;
            }
            progress.event(&ProgressEvent::LayerCached {
                digest: desc.digest.clone(),
            });
            return Ok(record(m.unpacked_size, m.entries));
        }
        if dir.exists() {
            return Err(Error::io(
                format!(
                    "layer directory {} exists for another diff id (hash prefix collision) or without metadata; run prune",
                    dir.display()
                ),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let unpacker = &*self.inner.opts.unpacker;
        // The layer's bytes: a local blob (verified first), or a pipe that
        // the download feeds while the unpacker reads it.
        let (input, feed) = match source {
            Source::Local(files) => {
                let p = files
                    .get(&desc.digest)
                    .cloned()
                    .ok_or_else(|| Error::Import {
                        path: PathBuf::from(image),
                        reason: format!("layer {} is missing from the archive", desc.digest),
                    })?;
                let mut f = crate::archive_blob::open_local(&p, desc)?;
                let actual = tokio::task::spawn_blocking(move || -> io::Result<String> {
                    let mut h = Sha256::new();
                    io::copy(&mut f, &mut h)?;
                    Ok(format!("sha256:{}", hex::encode(h.finalize())))
                })
                .await
                .map_err(|e| Error::io("hash task", io::Error::other(e)))?
                .ctx(|| format!("reading {}", p.display()))?;
                if actual != desc.digest {
                    return Err(Error::DigestMismatch {
                        what: format!("{image}: layer {}", p.display()),
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                let f = crate::archive_blob::open_local(&p, desc)?.into_inner();
                (OwnedFd::from(f), None)
            }
            Source::Registry { client, oref } => {
                let (rx, tx) =
                    layer_pipe().ctx(|| "creating a pipe to the unpacker".to_string())?;
                (rx, Some((client, oref, tx)))
            }
        };
        // Unpack into scratch (never trusted), and rename it into place only
        // once the blob's digest and the diff id are verified.
        let scratch_dir = self.inner.scratch.join(format!("unpack-{}", self.next()));
        let mut dir_guard = Cleanup {
            path: Some(scratch_dir.clone()),
            unpacker,
        };
        let opts = UnpackOptions {
            image: image.to_string(),
            layer: desc.digest.clone(),
            expected_diff_id: Some(diff_id.to_string()),
            ownership: self.inner.opts.ownership,
            bounds: self.image_bounds(),
        };
        let up = self.inner.opts.unpacker.clone();
        let media_type = desc.media_type.clone();
        let sd = scratch_dir.clone();
        let unpacking =
            tokio::task::spawn_blocking(move || up.unpack(input, &media_type, &sd, &opts));
        let fetched = match feed {
            Some((client, oref, tx)) => {
                let what = format!("layer {} to the unpacker", desc.digest);
                match tokio::net::unix::pipe::Sender::from_owned_fd(tx) {
                    Ok(mut tx) => {
                        self.download(image, client, oref, desc, &mut tx, &what, progress)
                            .await
                    }
                    Err(e) => Err(Error::io(format!("sending {what}"), e)),
                }
                // The pipe is closed here: the unpacker sees the end of the layer.
            }
            None => Ok(()),
        };
        // Always wait for the unpacker, so that the scratch is removed only
        // once nothing writes in it any more.
        let unpacked = unpacking
            .await
            .map_err(|e| Error::io("unpack task", io::Error::other(e)))?;
        let report = match (fetched, unpacked) {
            (Ok(()), Ok(report)) => report,
            // The download's verdict comes first: a wrong or cut blob makes
            // the unpacker fail too, for a less telling reason.
            (Err(e @ (Error::DigestMismatch { .. } | Error::Registry { .. })), _) => return Err(e),
            // The unpacker stopped (an unsafe entry, ...): the download then
            // fails with a broken pipe, which says less.
            (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        };
        if report.diff_id != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("{image}: uncompressed layer {}", desc.digest),
                expected: diff_id.to_string(),
                actual: report.diff_id,
            });
        }
        let tree_digest = match wants_digest {
            true => Some(self.tree_digest_of(&scratch_dir).await?),
            false => None,
        };
        let meta = LayerMeta {
            diff_id: diff_id.to_string(),
            unpacked_size: report.bytes,
            entries: report.entries,
            tree_digest,
        };
        self.write_layer_meta(&dir, &meta)?;
        fs::rename(&scratch_dir, &dir).ctx(|| format!("renaming layer into {}", dir.display()))?;
        dir_guard.path = None;
        progress.event(&ProgressEvent::LayerUnpacked {
            digest: desc.digest.clone(),
            bytes: report.bytes,
        });
        Ok(record(report.bytes, report.entries))
    }
}

impl Store {
    /// The unpacker's [`crate::tree_digest`] of `dir`, off the async threads.
    async fn tree_digest_of(&self, dir: &Path) -> Result<String> {
        let up = self.inner.opts.unpacker.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || up.tree_digest(&dir))
            .await
            .map_err(|e| Error::io("tree digest task", io::Error::other(e)))?
    }

    /// Write `l/<id>.json` for the layer directory `dir` (atomically).
    fn write_layer_meta(&self, dir: &Path, meta: &LayerMeta) -> Result<()> {
        let data = serde_json::to_vec(meta)
            .map_err(|e| Error::io("encoding layer meta", io::Error::other(e)))?;
        write_atomic(
            &self.inner.scratch,
            self.next(),
            &dir.with_extension("json"),
            &data,
        )
    }
}

/// What an image needs in the store, estimated before its layers are
/// unpacked: twice their compressed size (unpacked layers of gzip-compressed
/// images are typically 1.5 to 3 times as large).
fn space_needed(layers: &[Descriptor]) -> u64 {
    layers
        .iter()
        .fold(0u64, |n, l| n.saturating_add(l.size))
        .saturating_mul(2)
}

/// What a failed manifest GET means for the user, and what to do.
fn explain_manifest_error(r: &ImageRef, e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let what = match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}@{d}", r.repository),
        (Some(t), None) => format!("{}:{t}", r.repository),
        (None, None) => r.repository.clone(),
    };
    let codes: Vec<&C> = match e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().map(|e| &e.code).collect(),
        _ => Vec::new(),
    };
    let has = |c: &[C]| codes.iter().any(|x| c.contains(x));
    if matches!(e, E::ImageManifestNotFoundError(_)) || has(&[C::ManifestUnknown, C::NotFound]) {
        format!(
            "image not found: {} has no {what} (manifest unknown); check the name and the tag",
            r.registry
        )
    } else if has(&[C::NameUnknown, C::NameInvalid]) {
        format!(
            "repository not found: {} has no repository {}; check the name",
            r.registry, r.repository
        )
    } else if matches!(e, E::UnauthorizedError { .. } | E::AuthenticationFailure(_))
        || has(&[C::Unauthorized, C::Denied])
    {
        format!(
            "access denied to {what} ({e}); the image does not exist or needs credentials: \
             add them to an auth file (e.g. ~/.docker/config.json or $REGISTRY_AUTH_FILE)"
        )
    } else if let E::RequestError(re) = e {
        format!(
            "cannot reach {} ({re}); check the address and the network",
            r.registry
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests;
