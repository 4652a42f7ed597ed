//! The Codabench site as the far side of a job: status PATCHes, bundle
//! GETs, presigned PUTs, the scores POST and live logs over WebSocket.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::bundle::{extract_zip, UnzipError, UnzipLimits};
use super::bundle_cache::{BundleCache, CacheError};
use super::error::JobError;
use super::lifecycle::{Reporter, Slot};
use super::step::FetchError;
use crate::site::live::{live_url, LiveConfig, LiveKind, LiveLog};
use crate::site::{SiteClient, SubmissionUpdate, UploadKind};

pub struct SiteReporter {
    client: SiteClient,
    unzip: UnzipLimits,
    /// Where `input_data` and `reference_data` are kept across jobs.
    cache: Option<Arc<BundleCache>>,
    live: Mutex<HashMap<&'static str, LiveLog>>,
}

impl SiteReporter {
    pub fn new(client: SiteClient, unzip: UnzipLimits, cache: Option<Arc<BundleCache>>) -> Self {
        SiteReporter {
            client,
            unzip,
            cache,
            live: Mutex::default(),
        }
    }

    async fn extract(&self, zip: &Path, dest: &Path) -> Result<(), UnzipError> {
        let limits = self.unzip;
        let (z, d) = (zip.to_path_buf(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || extract_zip(&z, &d, limits))
            .await
            .map_err(|e| UnzipError::BadZip(e.to_string()))?
    }

    /// A cached slot: extract from the cached zip (downloading it into the
    /// cache on a miss). A hit whose zip turns out damaged while extracting
    /// is discarded and fetched once more. `None` when the cache itself is
    /// unusable (the caller then downloads as if there were no cache).
    async fn fetch_cached(
        &self,
        cache: &BundleCache,
        source: &str,
        dest: &Path,
    ) -> Option<Result<Option<String>, FetchError>> {
        for _ in 0..2 {
            let client = &self.client;
            let lease = cache
                .get_or_fetch(source, |tmp| async move {
                    client
                        .download_bundle(source, &tmp)
                        .await
                        .map(|d| d.md5)
                        .map_err(|e| FetchError::of(e.to_string(), &e))
                })
                .await;
            let lease = match lease {
                Ok(l) => l,
                Err(CacheError::Download(e)) => return Some(Err(e)),
                Err(e) => {
                    tracing::warn!(error = %e, "bundle cache unusable; downloading without it");
                    return None;
                }
            };
            match self.extract(lease.path(), dest).await {
                Ok(()) => return Some(Ok(Some(lease.md5().to_string()))),
                // A damaged cached copy: drop it, start the slot afresh.
                Err(UnzipError::BadZip(e)) if lease.hit() => {
                    tracing::warn!(error = %e, "cached bundle is damaged; downloading it again");
                    cache.invalidate(lease).await;
                    if let Err(e) =
                        std::fs::remove_dir_all(dest).and_then(|_| std::fs::create_dir_all(dest))
                    {
                        return Some(Err(format!("emptying {}: {e}", dest.display()).into()));
                    }
                }
                Err(e) => return Some(Err(FetchError::of(e.to_string(), &e))),
            }
        }
        Some(Err("Bad or empty zip file".to_string().into()))
    }

    /// Flush and close the live channels.
    pub async fn finish(&self) {
        let logs: Vec<LiveLog> = self
            .live
            .lock()
            .map(|mut m| m.drain().map(|(_, l)| l).collect())
            .unwrap_or_default();
        // At the same time: a site that is away costs one flush timeout,
        // not one per channel.
        futures_util::future::join_all(logs.into_iter().map(LiveLog::close)).await;
    }
}

impl Reporter for SiteReporter {
    async fn update(&self, update: SubmissionUpdate) -> Result<(), JobError> {
        self.client.update(&update).await.map_err(|e| {
            if e.got_no_answer() {
                JobError::transient(e.to_string())
            } else {
                JobError::new(e.to_string())
            }
        })
    }

    async fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        scratch: &Path,
    ) -> Result<Option<String>, FetchError> {
        if let (Some(cache), Slot::InputData | Slot::ReferenceData) = (&self.cache, slot) {
            if let Some(done) = self.fetch_cached(cache, source, dest).await {
                return done;
            }
        }
        let zip = scratch.join(format!("{}.zip", slot.key()));
        let got = self
            .client
            .download_bundle(source, &zip)
            .await
            .map_err(|e| FetchError::of(e.to_string(), &e))?;
        self.extract(&zip, dest)
            .await
            .map_err(|e| FetchError::of(e.to_string(), &e))?;
        let _ = std::fs::remove_file(&zip);
        Ok(Some(got.md5))
    }

    async fn upload(&self, target: &str, file: &Path, kind: UploadKind) -> Result<(), String> {
        self.client
            .put_file(target, file, kind)
            .await
            .map_err(|e| e.to_string())
    }

    async fn scores(&self, scores: &Value) -> Result<(), String> {
        self.client
            .post_scores(scores)
            .await
            .map_err(|e| e.to_string())
    }

    fn live(&self, kind: LiveKind, message: &str) {
        let Ok(mut logs) = self.live.lock() else {
            return;
        };
        let log = logs.entry(kind.query()).or_insert_with(|| {
            let url = live_url(
                self.client.api_url(),
                self.client.user_pk(),
                self.client.submission_id(),
                self.client.secret(),
                kind,
            )
            .unwrap_or_default();
            LiveLog::start(url, kind, LiveConfig::default())
        });
        log.send(message);
    }

    async fn flush_live(&self) {
        self.finish().await;
    }
}
