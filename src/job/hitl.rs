//! Human in the loop (Codabench #2443, protocol v1.27 §9): a scoring step
//! whose task and worker both say `human_in_the_loop` ends in `Awaiting
//! validation` and holds its scores, detailed results, result zip and
//! `Finished` until an operator approves or rejects it.
//!
//! Unlike upstream, the decision is never read from the job's `output/`
//! (which the scoring program can write, so it could approve itself): it
//! is a file in `<HOST_DIRECTORY>/hitl/<submission>/`, mode 0700, outside
//! every sandbox mount, written by `compute-worker hitl approve|reject`.
//!
//! Layout of one pending job's directory:
//! - `pending.json`: what `hitl list` shows ([`Pending`]);
//! - `decision`: `approve` or `reject`, written by the operator (renamed
//!   into place, so it is never read half-written).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::step::{Reporter, Step};
use crate::site::{Status, SubmissionUpdate};

/// Upstream's limit of the wait: 86400 s of polling.
pub const TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The worker's side of human in the loop.
#[derive(Debug, Clone)]
pub struct Hitl {
    /// `HUMAN_IN_THE_LOOP`.
    pub enabled: bool,
    /// Where pending jobs and the operator's decisions live.
    pub dir: PathBuf,
    /// How often the decision is looked for.
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for Hitl {
    fn default() -> Self {
        Hitl {
            enabled: false,
            dir: std::env::temp_dir().join("compute-worker-hitl"),
            poll: Duration::from_secs(1),
            timeout: TIMEOUT,
        }
    }
}

/// `<HOST_DIRECTORY>/hitl`: where `serve` and `compute-worker hitl` meet.
pub fn dir_of(host_directory: &Path) -> PathBuf {
    host_directory.join("hitl")
}

/// What an operator needs to decide, as `hitl list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub submission_id: u64,
    pub scores: Value,
    /// The scoring step's `output/` on this host.
    pub output: PathBuf,
    /// The detailed results page, when the program wrote one.
    pub detailed_results: Option<PathBuf>,
    /// Seconds since the epoch when the wait began.
    pub since: u64,
    /// The `serve` process waiting for the decision.
    pub pid: u32,
}

/// An operator's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn word(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// How the wait ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Approved,
    /// Revoked or shut down: nothing is published; the task goes back.
    Cancelled,
}

/// Codabench's `SubmissionException` wrapper (§8), `..` artefact included.
fn submission_failed(msg: &str) -> String {
    format!("Submission failed: {msg}. See logs for more details.")
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The task and the worker must agree (§9 step 1), in both steps: a HITL
/// task on a normal worker would publish what a human was to approve.
pub fn check_config(step: &Step, hitl: &Hitl) -> Result<(), String> {
    if step.human_in_the_loop == hitl.enabled {
        return Ok(());
    }
    Err(submission_failed(&format!(
        "Task rejected because the Site Worker and Compute Worker do not have the same \
         HUMAN_IN_THE_LOOP configuration (task={}, compute_worker={}).",
        py_bool(step.human_in_the_loop),
        py_bool(hitl.enabled)
    )))
}

/// Whether this step waits for an operator.
pub fn gates(step: &Step, hitl: &Hitl) -> bool {
    step.is_scoring && step.human_in_the_loop && hitl.enabled
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing directory keeps its mode: make it private.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write `bytes` to `path` through a rename: readers never see half.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Record an operator's decision for `submission_id` (`hitl approve|reject`).
pub fn decide(dir: &Path, submission_id: u64, decision: Decision) -> Result<Pending, String> {
    let job = dir.join(submission_id.to_string());
    let pending = read_pending(&job.join("pending.json")).map_err(|e| {
        format!(
            "no job of submission {submission_id} awaits validation in {} ({e}); \
             see `compute-worker hitl list`",
            dir.display()
        )
    })?;
    write_atomic(&job.join("decision"), decision.word().as_bytes())
        .map_err(|e| format!("cannot write the decision in {}: {e}", job.display()))?;
    Ok(pending)
}

fn read_pending(path: &Path) -> Result<Pending, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every job awaiting validation under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Pending>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut out: Vec<Pending> = entries
        .flatten()
        .filter_map(|e| read_pending(&e.path().join("pending.json")).ok())
        .collect();
    out.sort_by_key(|p| (p.since, p.submission_id));
    Ok(out)
}

/// The scoring step's wait for an operator, after the programs ended and
/// the scores were read, before anything of the result is published.
pub async fn await_decision<R: Reporter>(
    r: &R,
    hitl: &Hitl,
    step: &Step,
    output: &Path,
    scores: &Value,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
) -> Result<Waited, String> {
    let id = step.submission_id;
    let job = hitl.dir.join(id.to_string());
    let prepared = create_private_dir(&hitl.dir)
        .and_then(|_| create_private_dir(&job))
        // A decision left from an earlier delivery of this task was about
        // other results: only one made for these counts.
        .and_then(|_| match std::fs::remove_file(job.join("decision")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|_| {
            let pending = Pending {
                submission_id: id,
                scores: scores.clone(),
                output: output.to_path_buf(),
                detailed_results: super::results::detailed_results_name(output)
                    .map(|n| output.join(n)),
                since: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                pid: std::process::id(),
            };
            let json = serde_json::to_vec_pretty(&pending).unwrap_or_default();
            write_atomic(&job.join("pending.json"), &json)
        });
    if let Err(e) = prepared {
        let _ = std::fs::remove_dir_all(&job);
        return Err(format!(
            "the worker cannot record the job awaiting validation in {}: {e}",
            job.display()
        ));
    }
    if let Err(e) = r
        .update(SubmissionUpdate::status(Status::AwaitingValidation))
        .await
    {
        tracing::warn!(error = %e, "could not report Awaiting validation");
    }
    tracing::info!(
        submission = id,
        scores = %scores,
        output = %output.display(),
        decision_dir = %job.display(),
        "awaiting validation: approve with `compute-worker hitl approve {id}`, reject with \
         `compute-worker hitl reject {id}` (the decision is read only from {}, which no sandbox \
         can reach; a hitl_approved/hitl_rejected file in output/ has no effect)",
        job.display()
    );
    let waited = wait(hitl, &job, cancel, soft_deadline).await;
    let _ = std::fs::remove_dir_all(&job);
    match waited {
        Ok(Some(Decision::Approve)) => {
            tracing::info!(submission = id, "approved by the operator; publishing");
            Ok(Waited::Approved)
        }
        Ok(Some(Decision::Reject)) => {
            tracing::info!(submission = id, "rejected by the operator");
            Err(submission_failed(&format!(
                "HITL: submission {id} rejected by the compute node operator."
            )))
        }
        Ok(None) => Ok(Waited::Cancelled),
        Err(Timeout::Hitl) => Err(submission_failed(&format!(
            "HITL: 24h timeout reached without validation (submission {id})"
        ))),
        Err(Timeout::Soft) => Err(super::layout::soft_time_limit_message()),
    }
}

enum Timeout {
    Hitl,
    Soft,
}

/// Poll for the decision; `None` when cancelled.
async fn wait(
    hitl: &Hitl,
    job: &Path,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
) -> Result<Option<Decision>, Timeout> {
    let end = Instant::now() + hitl.timeout;
    loop {
        match std::fs::read_to_string(job.join("decision")).as_deref() {
            Ok(d) if d.trim() == "approve" => return Ok(Some(Decision::Approve)),
            Ok(d) if d.trim() == "reject" => return Ok(Some(Decision::Reject)),
            Ok(other) => tracing::warn!(decision = other, "unknown decision ignored"),
            Err(_) => {}
        }
        let now = Instant::now();
        if soft_deadline.is_some_and(|d| d <= now) {
            return Err(Timeout::Soft);
        }
        if end <= now {
            return Err(Timeout::Hitl);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(hitl.poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_need_a_pending_job() {
        let dir = tempfile::tempdir().unwrap();
        let err = decide(dir.path(), 7, Decision::Approve).unwrap_err();
        assert!(err.contains("no job of submission 7"), "{err}");
        assert!(list(dir.path()).unwrap().is_empty());
    }
}
