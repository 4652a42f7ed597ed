//! `COMPUTE_WORKER_DISABLE_LOG_UPLOAD` (Codabench #2460, protocol v1.27
//! §10): a job's program output stays on this host. A [`Reporter`] wrapper,
//! so the job itself does not change:
//! - no live program/ingestion lines (the `error_logs` and detailed-results
//!   frames still go out);
//! - no stdout/stderr PUTs: the logs stay in the job's `logs/` directory,
//!   removed with it unless `COMPUTE_WORKER_NO_CLEANUP`;
//! - failure texts point to the organisers instead of logs the participant
//!   cannot see.

use std::path::Path;

use serde_json::Value;

use super::error::JobError;
use super::lifecycle::{Reporter, Slot, Uploads};
use super::step::FetchError;
use crate::site::live::LiveKind;
use crate::site::{Status, SubmissionUpdate, UploadKind};

/// Upstream's wording when logs are not uploaded.
const CONTACT: &str = "Contact the Organizer(s) for more details.";

pub struct Silent<'a, R> {
    inner: &'a R,
    /// The step's four log upload targets.
    logs: Vec<String>,
}

impl<'a, R: Reporter> Silent<'a, R> {
    pub fn new(inner: &'a R, uploads: &Uploads) -> Self {
        let logs = [
            &uploads.stdout,
            &uploads.stderr,
            &uploads.ingestion_stdout,
            &uploads.ingestion_stderr,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Silent { inner, logs }
    }
}

/// A failure text as upstream words it when logs are not uploaded.
pub fn reword(details: &str) -> String {
    for tail in [
        "See logs for more details.",
        "Check the logs for more information",
    ] {
        if let Some(head) = details.strip_suffix(tail) {
            return format!("{head}{CONTACT}");
        }
    }
    details.to_string()
}

impl<R: Reporter> Reporter for Silent<'_, R> {
    async fn update(&self, mut update: SubmissionUpdate) -> Result<(), JobError> {
        if update.status == Some(Status::Failed) {
            update.status_details = update.status_details.as_deref().map(reword);
        }
        self.inner.update(update).await
    }

    async fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        scratch: &Path,
    ) -> Result<Option<String>, FetchError> {
        self.inner.fetch(slot, source, dest, scratch).await
    }

    async fn upload(&self, target: &str, file: &Path, kind: UploadKind) -> Result<(), String> {
        if self.logs.iter().any(|l| l == target) {
            tracing::debug!(file = %file.display(), "COMPUTE_WORKER_DISABLE_LOG_UPLOAD: log kept on this host");
            return Ok(());
        }
        self.inner.upload(target, file, kind).await
    }

    async fn scores(&self, scores: &Value) -> Result<(), String> {
        self.inner.scores(scores).await
    }

    fn live(&self, kind: LiveKind, message: &str) {
        if matches!(kind, LiveKind::ErrorLogs | LiveKind::DetailedResults) {
            self.inner.live(kind, message);
        }
    }

    async fn flush_live(&self) {
        self.inner.flush_live().await;
    }
}

#[cfg(test)]
mod tests {
    use super::reword;

    #[test]
    fn failure_texts_point_to_the_organisers() {
        assert_eq!(
            reword("Submission failed: HITL: x.. See logs for more details."),
            "Submission failed: HITL: x.. Contact the Organizer(s) for more details."
        );
        assert_eq!(
            reword("Docker image pull failed: Pull for i failed! Check the logs for more information"),
            "Docker image pull failed: Pull for i failed! Contact the Organizer(s) for more details."
        );
        assert_eq!(reword("other"), "other");
    }
}
