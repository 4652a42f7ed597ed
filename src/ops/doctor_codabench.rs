//! `doctor` rows for Codabench settings whose meaning depends on how the
//! worker is deployed.

use super::check::Check;
use crate::config::codabench::Codabench;

/// Settings that only work under a condition `doctor` cannot see.
pub fn rows(c: &Codabench) -> Vec<Check> {
    let mut out = Vec::new();
    if c.disable_prediction_upload {
        out.push(Check::warn(
            "prediction upload",
            "COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD: predictions of Codabench 1.27+ tasks stay on \
             this host (job directories are kept), so both steps of a submission must run on this \
             worker; a scoring step on another worker fails",
            "give this worker a queue no other worker consumes, or unset the setting",
        ));
    }
    out
}
