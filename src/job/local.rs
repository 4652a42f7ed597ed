//! `compute-worker run`: one submission through both steps on this machine,
//! with no broker and no site. Bundles are local directories or zips,
//! statuses and live output go to the terminal, and everything the site
//! would receive lands in a results folder.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bundle::{copy_dir, extract_zip, UnzipLimits};
use super::error::JobError;
use super::lifecycle::{Reporter, Slot};
use super::step::FetchError;
use crate::site::live::LiveKind;
use crate::site::{SubmissionUpdate, UploadKind};

/// Reports one step to the terminal and a folder.
pub struct LocalReporter {
    /// `results/prediction` or `results/scoring`.
    pub dir: PathBuf,
    /// Prefix of live lines, e.g. `prediction`.
    pub step: &'static str,
    pub unzip: UnzipLimits,
}

impl LocalReporter {
    pub fn new(dir: PathBuf, step: &'static str) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(LocalReporter {
            dir,
            step,
            unzip: UnzipLimits::default(),
        })
    }
}

impl Reporter for LocalReporter {
    async fn update(&self, update: SubmissionUpdate) -> Result<(), JobError> {
        let mut parts = Vec::new();
        if let Some(s) = update.status {
            parts.push(format!("status {}", s.as_str()));
        }
        if let Some(d) = &update.status_details {
            parts.push(d.clone());
        }
        if let Some(t) = update.failure_type {
            parts.push(t.as_str().to_string());
        }
        if let Some(m) = &update.error_message {
            parts.push(m.clone());
        }
        if let Some(m) = &update.md5 {
            parts.push(format!("md5 {m}"));
        }
        eprintln!("[{}] {}", self.step, parts.join(": "));
        Ok(())
    }

    async fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        _scratch: &Path,
    ) -> Result<Option<String>, FetchError> {
        let src = PathBuf::from(source);
        let what = slot.key();
        if src.is_dir() {
            copy_dir(&src, dest)
                .map_err(|e| FetchError::of(format!("copying {what} from {source}: {e}"), &e))?;
            return Ok(None);
        }
        if !src.is_file() {
            return Err(format!("{what}: {source} is neither a directory nor a zip file").into());
        }
        let limits = self.unzip;
        let d = dest.to_path_buf();
        tokio::task::spawn_blocking(move || extract_zip(&src, &d, limits))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| FetchError::of(format!("{what} ({source}): {e}"), &e))?;
        Ok(None)
    }

    async fn upload(&self, target: &str, file: &Path, _kind: UploadKind) -> Result<(), String> {
        let dest = self.dir.join(target);
        std::fs::copy(file, &dest)
            .map(|_| ())
            .map_err(|e| format!("saving {}: {e}", dest.display()))
    }

    async fn scores(&self, scores: &Value) -> Result<(), String> {
        let text = serde_json::to_string_pretty(scores).map_err(|e| e.to_string())?;
        std::fs::write(self.dir.join("scores.json"), text + "\n").map_err(|e| e.to_string())
    }

    fn live(&self, kind: LiveKind, message: &str) {
        match kind {
            LiveKind::Program
            | LiveKind::Ingestion
            | LiveKind::IngestionProgram
            | LiveKind::ScoringProgram => {
                for line in message.lines() {
                    eprintln!("[{} {}] {line}", self.step, kind.query());
                }
            }
            LiveKind::ErrorLogs => eprintln!("[{}] error: {message}", self.step),
            LiveKind::DetailedResults => {}
        }
    }
}
