//! What a step sends while and after its programs run: the captured logs
//! and the detailed results page.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::results;
use super::step::{Reporter, Step};
use crate::site::live::LiveKind;
use crate::site::UploadKind;

/// Upload the captured logs that are not empty.
pub async fn upload_logs<R: Reporter>(r: &R, step: &Step, root: &Path) {
    let u = &step.uploads;
    for (file, target) in [
        ("stdout", &u.stdout),
        ("stderr", &u.stderr),
        ("ingestion_stdout", &u.ingestion_stdout),
        ("ingestion_stderr", &u.ingestion_stderr),
    ] {
        let path = root.join("logs").join(file);
        let non_empty = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if let (Some(target), true) = (target, non_empty) {
            if let Err(e) = r.upload(target, &path, UploadKind::Zip).await {
                tracing::warn!(error = %e, file, "log upload failed");
            }
        }
    }
}

/// Uploads `output/detailed_results.html` (or the first `*.html`) whenever
/// it changes while the programs run, and once more at the end: a copy
/// read without following links, bounded, saved in the worker's `logs/`.
pub struct DetailedResults {
    target: String,
    output: PathBuf,
    copy: PathBuf,
    cap: super::beneath::Cap,
    last: Option<SystemTime>,
}

impl DetailedResults {
    pub fn new(target: String, root: &Path, cap: super::beneath::Cap) -> Self {
        DetailedResults {
            target,
            output: root.join("output"),
            copy: root.join("logs").join("detailed_results.html"),
            cap,
            last: None,
        }
    }

    /// Upload the page if it changed (or, at the end, if it exists at all).
    pub async fn check<R: Reporter>(&mut self, r: &R, last_time: bool) {
        let unless = if last_time { None } else { self.last };
        let page = match results::read_detailed_results(&self.output, self.cap, unless) {
            Ok(Some(page)) => page,
            Ok(None) => {
                if last_time {
                    tracing::warn!("detailed results were not written before the end of the run");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "detailed results refused");
                if last_time {
                    r.live(
                        LiveKind::ErrorLogs,
                        &format!("detailed results refused: {e}"),
                    );
                }
                return;
            }
        };
        let Some(data) = page.data else {
            return;
        };
        self.last = page.modified;
        if let Err(e) = std::fs::write(&self.copy, data) {
            tracing::warn!(error = %e, "could not save the detailed results");
            return;
        }
        match r.upload(&self.target, &self.copy, UploadKind::Html).await {
            Ok(()) => r.live(LiveKind::DetailedResults, ""),
            Err(e) => tracing::warn!(error = %e, "detailed results upload failed"),
        }
    }
}
