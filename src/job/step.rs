//! What a job step is (its bundles, uploads, image, limits), how it ended,
//! and the far side it reports to.

use std::future::Future;
use std::path::Path;

use serde_json::Value;

use super::command::ProgramKind;
use super::error::JobError;

use crate::site::live::LiveKind;
use crate::site::{SubmissionUpdate, UploadKind};

/// Which Codabench sent the task, told apart by its keys
/// (codabench-protocol-v127.md §3): it decides what runs and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Sites up to v1.26: `program_data` is the submission (prediction) or
    /// the scoring program, and a submission with a command runs.
    Legacy,
    /// Sites from v1.27 on: `submission_data` in both steps, never run,
    /// mounted read-only at `/app/ingested_program` in every program;
    /// `ingestion_program_data` and `scoring_program_data`.
    Current,
}

/// Where one bundle goes in the job's root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `program_data` (legacy): the submission (prediction) or scoring program.
    Program,
    /// `submission_data` (current): the submission, in both steps.
    Submission,
    /// `scoring_program_data` (current).
    ScoringProgram,
    IngestionProgram,
    InputData,
    ReferenceData,
    /// The prediction step's output, in the scoring step.
    PredictionResult,
    /// The prediction step's output kept on this host
    /// (`COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD`), into `submission/`.
    KeptPrediction,
}

impl Slot {
    pub fn dir(self) -> &'static str {
        match self {
            Slot::Program => "program",
            Slot::Submission => "submission",
            Slot::ScoringProgram => "scoring_program",
            Slot::IngestionProgram => "ingestion_program",
            Slot::InputData => "input_data",
            Slot::ReferenceData => "input/ref",
            Slot::PredictionResult => "input/res",
            Slot::KeptPrediction => "submission",
        }
    }

    /// The `run_args` key (the ingestion program's as legacy sites name it).
    pub fn key(self) -> &'static str {
        match self {
            Slot::Program => "program_data",
            Slot::Submission => "submission_data",
            Slot::ScoringProgram => "scoring_program_data",
            Slot::IngestionProgram => "ingestion_program",
            Slot::InputData => "input_data",
            Slot::ReferenceData => "reference_data",
            Slot::PredictionResult | Slot::KeptPrediction => "prediction_result",
        }
    }
}

/// Upload names, as the `run_args` keys of the prediction step; the scoring
/// step's names differ only in their prefix.
#[derive(Debug, Clone, Default)]
pub struct Uploads {
    /// `prediction_result` (prediction) or `scoring_result` (scoring).
    pub result: Option<String>,
    pub detailed_results: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub ingestion_stdout: Option<String>,
    pub ingestion_stderr: Option<String>,
}

/// One job step, independent of where it came from.
#[derive(Debug, Clone)]
pub struct Step {
    pub submission_id: u64,
    pub user_pk: u64,
    pub is_scoring: bool,
    pub image: String,
    /// Seconds; 0 means no limit.
    pub execution_time_limit: u64,
    pub ingestion_only_during_scoring: bool,
    /// Bundles in download order.
    pub bundles: Vec<(Slot, String)>,
    pub uploads: Uploads,
    /// The task's `human_in_the_loop` (absent: false).
    pub human_in_the_loop: bool,
    pub protocol: Protocol,
}

impl Step {
    /// The live-log channel of `kind`'s output.
    pub fn live_kind(&self, kind: ProgramKind) -> LiveKind {
        match (self.protocol, kind) {
            (Protocol::Legacy, ProgramKind::Program) => LiveKind::Program,
            (Protocol::Legacy, ProgramKind::Ingestion) => LiveKind::Ingestion,
            (Protocol::Current, ProgramKind::Program) => LiveKind::ScoringProgram,
            (Protocol::Current, ProgramKind::Ingestion) => LiveKind::IngestionProgram,
        }
    }
}

/// The far side of a job: the Codabench site, or the local terminal.
pub trait Reporter: Send + Sync {
    /// A status PATCH (or failure report). The error is
    /// [`transient`](JobError::transient) only when the request got no
    /// answer at all (the connection failed before it was sent), so that a
    /// retry cannot repeat what the site already did.
    fn update(&self, update: SubmissionUpdate)
        -> impl Future<Output = Result<(), JobError>> + Send;
    /// Put bundle `source` into `dest` (extracted). Returns the md5 of the
    /// zip when there was one.
    fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        scratch: &Path,
    ) -> impl Future<Output = Result<Option<String>, FetchError>> + Send;
    /// Upload `file` to `target` (a presigned URL, or a name locally).
    fn upload(
        &self,
        target: &str,
        file: &Path,
        kind: UploadKind,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn scores(&self, scores: &Value) -> impl Future<Output = Result<(), String>> + Send;
    /// A live message; never blocks.
    fn live(&self, kind: LiveKind, message: &str);
    /// Deliver the live messages sent so far (bounded by the live log's
    /// flush timeout). Called before a final status, so that a viewer who
    /// sees `Scoring`, `Finished` or `Failed` already has every line.
    fn flush_live(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Why a bundle could not be fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchError {
    pub message: String,
    /// The disk it was going to ran out of space (or quota): making room
    /// may let it pass.
    pub no_space: bool,
}

impl FetchError {
    /// `message` for the failure `e`, telling a full disk.
    pub fn of(message: String, e: &(dyn std::error::Error + 'static)) -> Self {
        FetchError {
            message,
            no_space: rootfs_cache::is_no_space_error(e),
        }
    }
}

impl From<String> for FetchError {
    fn from(message: String) -> Self {
        FetchError {
            message,
            no_space: false,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Prediction done, `Scoring` reported.
    Scoring,
    /// Scoring done, scores posted, `Finished` reported.
    Finished { scores: Value },
    /// `Failed` reported with this message.
    Failed(String),
    /// Revoked or shut down: nothing more reported (the site cancels).
    Cancelled,
}

impl Ending {
    /// As the job metrics count it.
    pub fn outcome(&self) -> crate::metrics::JobOutcome {
        use crate::metrics::JobOutcome;
        match self {
            Ending::Scoring | Ending::Finished { .. } => JobOutcome::Finished,
            Ending::Failed(_) => JobOutcome::Failed,
            Ending::Cancelled => JobOutcome::Cancelled,
        }
    }
}
