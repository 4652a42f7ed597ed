//! The Codabench site as the far side of a job: status PATCHes, bundle
//! GETs, presigned PUTs, the scores POST and live logs over WebSocket.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use super::bundle::{extract_zip, UnzipLimits};
use super::lifecycle::{Reporter, Slot, Step, Uploads};
use crate::broker::celery::RunArgs;
use crate::site::live::{live_url, LiveConfig, LiveKind, LiveLog};
use crate::site::{SiteClient, SubmissionUpdate, UploadKind};

pub struct SiteReporter {
    client: SiteClient,
    unzip: UnzipLimits,
    live: Mutex<HashMap<&'static str, LiveLog>>,
}

impl SiteReporter {
    pub fn new(client: SiteClient, unzip: UnzipLimits) -> Self {
        SiteReporter {
            client,
            unzip,
            live: Mutex::default(),
        }
    }

    /// Flush and close the live channels.
    pub async fn finish(&self) {
        let logs: Vec<LiveLog> = self
            .live
            .lock()
            .map(|mut m| m.drain().map(|(_, l)| l).collect())
            .unwrap_or_default();
        for l in logs {
            l.close().await;
        }
    }
}

impl Reporter for SiteReporter {
    async fn update(&self, update: SubmissionUpdate) -> Result<(), String> {
        self.client.update(&update).await.map_err(|e| e.to_string())
    }

    async fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        scratch: &Path,
    ) -> Result<Option<String>, String> {
        let zip = scratch.join(format!("{}.zip", slot.key()));
        let got = self
            .client
            .download_bundle(source, &zip)
            .await
            .map_err(|e| e.to_string())?;
        let limits = self.unzip;
        let (z, d) = (zip.clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || extract_zip(&z, &d, limits))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
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
}

/// The step a Celery task describes.
pub fn step_from(args: &RunArgs) -> Step {
    let mut bundles = Vec::new();
    let mut add = |slot, url: &Option<String>| {
        if let Some(u) = url.as_ref().filter(|u| !u.is_empty()) {
            bundles.push((slot, u.clone()));
        }
    };
    add(Slot::Program, &args.program_data);
    add(Slot::IngestionProgram, &args.ingestion_program);
    add(Slot::InputData, &args.input_data);
    if args.is_scoring {
        add(Slot::ReferenceData, &args.reference_data);
        add(
            Slot::PredictionResult,
            &Some(args.prediction_result.clone()),
        );
    }
    let (result, logs) = if args.is_scoring {
        (
            args.scoring_result.clone(),
            [
                &args.scoring_stdout,
                &args.scoring_stderr,
                &args.scoring_ingestion_stdout,
                &args.scoring_ingestion_stderr,
            ],
        )
    } else {
        (
            Some(args.prediction_result.clone()),
            [
                &args.prediction_stdout,
                &args.prediction_stderr,
                &args.prediction_ingestion_stdout,
                &args.prediction_ingestion_stderr,
            ],
        )
    };
    Step {
        submission_id: args.id,
        user_pk: args.user_pk,
        is_scoring: args.is_scoring,
        image: args.docker_image.clone(),
        execution_time_limit: args.execution_time_limit,
        ingestion_only_during_scoring: args.ingestion_only_during_scoring,
        bundles,
        uploads: Uploads {
            result,
            detailed_results: args.detailed_results_url.clone(),
            stdout: logs[0].clone(),
            stderr: logs[1].clone(),
            ingestion_stdout: logs[2].clone(),
            ingestion_stderr: logs[3].clone(),
        },
    }
}
