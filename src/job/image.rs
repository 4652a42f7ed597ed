//! Image resolution for a step: the image cache (pulling what is missing)
//! or a fixed root filesystem.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::bundle_cache::BundleCache;
use super::error::JobError;
use crate::site::FailureType;

/// Where images come from.
pub enum Images {
    /// The image cache (pulling what is missing).
    Store(rootfs_cache::Store),
    /// A fixed root filesystem directory, whatever the step names.
    Rootfs(PathBuf),
}

/// A resolved image, kept from eviction while `_lease` lives.
pub struct ResolvedImage {
    /// Overlay lower directories, top-most first.
    pub layers: Vec<PathBuf>,
    pub config: rootfs_cache::ImageConfig,
    /// Found in the image cache (`Some(true)`) or pulled; `None` for a
    /// fixed rootfs.
    pub cache_hit: Option<bool>,
    /// Bytes of blobs fetched from the registry for it (0 unless pulled).
    pub fetched: u64,
    _lease: Option<rootfs_cache::Lease>,
}

/// Retries of a pull after a transient error, as Codabench's worker
/// (3 retries, 5 s apart: 4 attempts in all); a permanent error is not
/// retried.
const PULL_RETRIES: u32 = 3;
/// Default pause between pull attempts (`COMPUTE_WORKER_PULL_RETRY_DELAY`).
pub const PULL_RETRY_DELAY: Duration = Duration::from_secs(5);

impl Images {
    /// The image `reference`, from the cache or pulled; a transient pull
    /// failure is retried [`PULL_RETRIES`] times, `retry_delay` apart. A
    /// pull that finds the disk full evicts unused images and `bundles`
    /// (least recently used first) and is tried once more. A failed pull is
    /// a [`JobError`] with the `Docker_Image_Pull_Fail` report.
    pub async fn resolve(
        &self,
        reference: &str,
        retry_delay: Duration,
        bundles: Option<Arc<BundleCache>>,
    ) -> Result<ResolvedImage, JobError> {
        let store = match self {
            Images::Rootfs(dir) => {
                return Ok(ResolvedImage {
                    layers: vec![dir.clone()],
                    config: Default::default(),
                    cache_hit: None,
                    fetched: 0,
                    _lease: None,
                })
            }
            Images::Store(store) => store,
        };
        // Off the async threads: an image of a shared store is checked
        // (its layers hashed) the first time this worker uses it.
        let (s, r) = (store.clone(), reference.to_string());
        let found = tokio::task::spawn_blocking(move || s.get(&r))
            .await
            .unwrap_or_else(|e| Err(rootfs_cache::Error::NotFound(e.to_string())));
        match found {
            Ok(image) => {
                let lease = store
                    .lease(&image)
                    .map_err(|e| pull_failed(reference, &e))?;
                return Ok(ResolvedImage {
                    layers: image.layers,
                    config: image.config,
                    cache_hit: Some(true),
                    fetched: 0,
                    _lease: Some(lease),
                });
            }
            // A shared store holds it but it fails a check: refused, not pulled.
            Err(e @ rootfs_cache::Error::SharedStore { .. }) => {
                tracing::warn!(error = %e, "refusing an image of a shared store");
                return Err(pull_failed(reference, &e));
            }
            Err(_) => {}
        }
        let mut attempt = 1;
        // Counts every attempt's bytes: all of them came over the network.
        let progress = Counting::default();
        let mut made_room = false;
        loop {
            match store.pull_and_lease(reference, &progress).await {
                Ok((image, lease)) => {
                    return Ok(ResolvedImage {
                        layers: image.layers,
                        config: image.config,
                        cache_hit: Some(false),
                        fetched: progress.bytes(),
                        _lease: Some(lease),
                    })
                }
                Err(rootfs_cache::Error::NoSpace {
                    needed, store: at, ..
                }) if !made_room => {
                    made_room = true;
                    let (s, b, full) = (store.clone(), bundles.clone(), at.clone());
                    let evicted = tokio::task::spawn_blocking(move || {
                        super::room::make_room(Some(&s), b.as_deref(), &full, needed)
                    })
                    .await
                    .unwrap_or_default();
                    tracing::warn!(
                        "the image store {} is full while pulling {reference}: {}; trying once more",
                        at.display(),
                        evicted.describe()
                    );
                    continue;
                }
                Err(e) => {
                    let err = pull_failed(reference, &e);
                    if !err.transient || attempt > PULL_RETRIES {
                        tracing::warn!(attempt, transient = err.transient, error = %e, "pull failed; giving up");
                        return Err(err);
                    }
                    tracing::warn!(attempt, error = %e, "pull failed (transient); retrying in {retry_delay:?}");
                }
            }
            attempt += 1;
            tokio::time::sleep(retry_delay).await;
        }
    }
}

/// The pull's tracing lines, and a count of the bytes that arrived.
#[derive(Default)]
struct Counting {
    lines: rootfs_cache::TracingProgress,
    /// Bytes of finished blobs, and of each blob under way.
    done: std::sync::Mutex<(u64, std::collections::HashMap<String, u64>)>,
}

impl Counting {
    fn bytes(&self) -> u64 {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.0 + done.1.values().sum::<u64>()
    }
}

impl rootfs_cache::Progress for Counting {
    fn event(&self, ev: &rootfs_cache::ProgressEvent) {
        use rootfs_cache::ProgressEvent as E;
        self.lines.event(ev);
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            E::Downloaded {
                digest, done: n, ..
            } => {
                done.1.insert(digest.clone(), *n);
            }
            E::DownloadFinished { digest } => {
                if let Some(n) = done.1.remove(digest) {
                    done.0 += n;
                }
            }
            _ => {}
        }
    }
}

/// The step's failure for a failed pull of `reference`.
fn pull_failed(reference: &str, e: &rootfs_cache::Error) -> JobError {
    let message = match e {
        // The operator's problem, not the competition's: say where and how much.
        rootfs_cache::Error::NoSpace { .. } => format!("Docker image pull failed: {e}"),
        _ => format!(
            "Docker image pull failed: Pull for {reference} failed! Check the logs for more information"
        ),
    };
    let err = JobError::new(message).with_report(FailureType::DockerImagePullFail, e.to_string());
    JobError {
        transient: e.is_transient(),
        ..err
    }
}
