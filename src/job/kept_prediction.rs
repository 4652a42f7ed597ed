//! `COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD` (Codabench #2460), for
//! v1.27 tasks: the prediction step uploads nothing and keeps its job
//! directory under its fixed name; the scoring step, which must run on the
//! same worker, takes the prediction's output from there into its own
//! `submission/` (which then reaches `/app/ingested_program` and, by the
//! compatibility copy, `input/res`), as upstream does.

use std::path::{Path, PathBuf};

use super::error::JobError;
use super::step::{Protocol, Slot, Step};

/// The fixed job directory name of a v1.27 task's step, as Codabench's
/// worker names it since v1.32: `uPK-<u>_sID-<id>__ingestion` or
/// `…__scoring_program`.
pub fn named_root(work_dir: &Path, step: &Step, is_scoring: bool) -> PathBuf {
    work_dir.join(format!(
        "uPK-{}_sID-{}__{}",
        step.user_pk,
        step.submission_id,
        if is_scoring {
            "scoring_program"
        } else {
            "ingestion"
        }
    ))
}

/// Whether `step` keeps its prediction on this host.
pub fn applies(keep_predictions_here: bool, step: &Step) -> bool {
    if keep_predictions_here && step.protocol == Protocol::Legacy {
        tracing::warn!(
            "COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD applies to tasks of Codabench 1.27 and later \
             only; this task comes from an older site, so its prediction is uploaded"
        );
    }
    keep_predictions_here && step.protocol == Protocol::Current
}

/// The step as it runs when its prediction stays here: the prediction
/// step uploads no result; the scoring step takes the kept output instead
/// of downloading `prediction_result`.
pub fn adapt(step: &Step, work_dir: &Path) -> Step {
    let mut step = step.clone();
    if step.is_scoring {
        let output = named_root(work_dir, &step, false).join("output");
        for (slot, source) in &mut step.bundles {
            if *slot == Slot::PredictionResult {
                *slot = Slot::KeptPrediction;
                *source = output.to_string_lossy().into_owned();
            }
        }
    } else {
        step.uploads.result = None;
    }
    step
}

/// Copy the prediction step's kept `output` into `dest` (the scoring
/// step's `submission/`). The tree was written by programs: links and
/// special files are left out, nothing is followed.
pub fn take(output: &Path, dest: &Path) -> Result<(), JobError> {
    let is_dir = std::fs::symlink_metadata(output).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Err(JobError::new(format!(
            "Can't copy the prediction step's output: {} is not on this worker. With \
             COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD both steps of a submission must run on the \
             same worker (use only one compute worker for this queue).",
            output.display()
        )));
    }
    tracing::info!(from = %output.display(), "COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD: taking the prediction from this host");
    super::bundle::copy_dir(output, dest).map_err(|e| {
        JobError::new(format!(
            "Can't copy the prediction step's output from {}: {e}",
            output.display()
        ))
    })
}
