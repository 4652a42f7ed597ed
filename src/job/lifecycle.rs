//! One Codabench job step, from the task to the final report.
//!
//! Order (protocol §3.2, with the Python worker's bugs left out):
//! `Running` + hostname → (`Preparing`) → bundles (+ md5) → image → both
//! programs in parallel under one wall-clock limit → logs → result zip
//! uploaded → `Scoring` (prediction) or scores + `Finished` (scoring).
//! Every failure ends in `Failed` with a message a participant can act on,
//! and nothing of the sandboxes outlives the step.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::command::{self, Metadata, ProgramKind};
use super::layout::{self, MountPlan};
use super::program::{self, Stream};
use super::results::{self, ProgramOutcome};
use crate::metrics::{Metrics, Phase};
use crate::sandbox::{Bind, Limits, Network, Outcome, RunSpec, SandboxConfig};
use crate::site::live::LiveKind;
use crate::site::{FailureType, Status, SubmissionUpdate, UploadKind};

/// Where one bundle goes in the job's root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `program_data`: the submission (prediction) or scoring program.
    Program,
    IngestionProgram,
    InputData,
    ReferenceData,
    /// The prediction step's output, in the scoring step.
    PredictionResult,
}

impl Slot {
    pub fn dir(self) -> &'static str {
        match self {
            Slot::Program => "program",
            Slot::IngestionProgram => "ingestion_program",
            Slot::InputData => "input_data",
            Slot::ReferenceData => "input/ref",
            Slot::PredictionResult => "input/res",
        }
    }

    /// The `run_args` key.
    pub fn key(self) -> &'static str {
        match self {
            Slot::Program => "program_data",
            Slot::IngestionProgram => "ingestion_program",
            Slot::InputData => "input_data",
            Slot::ReferenceData => "reference_data",
            Slot::PredictionResult => "prediction_result",
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
}

/// The far side of a job: the Codabench site, or the local terminal.
pub trait Reporter: Send + Sync {
    /// A status PATCH (or failure report).
    fn update(&self, update: SubmissionUpdate) -> impl Future<Output = Result<(), String>> + Send;
    /// Put bundle `source` into `dest` (extracted). Returns the md5 of the
    /// zip when there was one.
    fn fetch(
        &self,
        slot: Slot,
        source: &str,
        dest: &Path,
        scratch: &Path,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
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
}

/// Where images come from.
pub enum Images {
    /// The image cache (pulling what is missing).
    Store(rootfs_cache::Store),
    /// A fixed root filesystem directory, whatever the step names.
    Rootfs(PathBuf),
}

/// A resolved image, kept from eviction while `_lease` lives.
pub struct ResolvedImage {
    pub layers: Vec<PathBuf>,
    pub config: rootfs_cache::ImageConfig,
    /// Found in the image cache (`Some(true)`) or pulled; `None` for a
    /// fixed rootfs.
    pub cache_hit: Option<bool>,
    _lease: Option<rootfs_cache::Lease>,
}

impl Images {
    pub async fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        match self {
            Images::Rootfs(dir) => Ok(ResolvedImage {
                layers: vec![dir.clone()],
                config: Default::default(),
                cache_hit: None,
                _lease: None,
            }),
            Images::Store(store) => {
                if let Ok(image) = store.get(reference) {
                    let lease = store.lease(&image).map_err(|e| e.to_string())?;
                    return Ok(ResolvedImage {
                        layers: image.layers,
                        config: image.config,
                        cache_hit: Some(true),
                        _lease: Some(lease),
                    });
                }
                let mut last = String::new();
                // Three attempts, as the Python worker; registries flake.
                for attempt in 0..3 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let progress = rootfs_cache::TracingProgress::default();
                    match store.pull_and_lease(reference, &progress).await {
                        Ok((image, lease)) => {
                            return Ok(ResolvedImage {
                                layers: image.layers,
                                config: image.config,
                                cache_hit: Some(false),
                                _lease: Some(lease),
                            })
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
        }
    }
}

/// Worker-wide settings of job steps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Job root directories are created here.
    pub work_dir: PathBuf,
    /// Organiser data mounted read-only at `/app/data`, when it exists.
    pub data_dir: Option<PathBuf>,
    /// `false` when `COMPETITION_CONTAINER_NETWORK_DISABLED` is true.
    pub network: bool,
    pub http_proxy: String,
    pub https_proxy: String,
    /// `CODALAB_IGNORE_CLEANUP_STEP`: keep job directories.
    pub keep_job_dir: bool,
    pub hostname: String,
    pub limits: Limits,
    /// Size cap of each uploaded stdout/stderr.
    pub log_cap: usize,
    pub detailed_results_interval: Duration,
    /// Per-slot GPUs and cpusets (`serve` with USE_GPU or --slot-cpus).
    pub slots: Option<Arc<super::worker_slots::SlotPlan>>,
    /// Job endings, phase times, image cache hits, busy slots.
    pub metrics: Metrics,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            work_dir: std::env::temp_dir().join("compute-worker-jobs"),
            data_dir: None,
            network: true,
            http_proxy: String::new(),
            https_proxy: String::new(),
            keep_job_dir: false,
            hostname: crate::broker::consumer::hostname(),
            limits: Limits::default(),
            log_cap: 50 << 20,
            detailed_results_interval: Duration::from_secs(5),
            slots: None,
            metrics: Metrics::default(),
        }
    }
}

/// Everything steps share.
pub struct Worker {
    pub sandbox: Arc<SandboxConfig>,
    pub images: Images,
    pub settings: Settings,
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

/// What a step left behind.
#[derive(Debug)]
pub struct StepReport {
    pub ending: Ending,
    /// The job's root directory, when kept.
    pub kept_root: Option<PathBuf>,
    /// The output folder of the step (inside the kept root).
    pub program_exit: Option<i32>,
}

/// A step failure: the message for `Failed`, and an optional report first.
struct Failure {
    message: String,
    report: Option<(FailureType, String)>,
}

impl<T: Into<String>> From<T> for Failure {
    fn from(message: T) -> Self {
        Failure {
            message: message.into(),
            report: None,
        }
    }
}

enum Stop {
    Done,
    TimedOut,
    Cancelled,
}

/// Run one step. Never panics on bad input; every path reports.
pub async fn run_step<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
) -> StepReport {
    let metrics = &w.settings.metrics;
    let _busy = metrics.busy_slot();
    let report = run_in_job_dir(w, r, step, cancel, soft_deadline).await;
    metrics.job_ended(step.is_scoring, &report.ending);
    report
}

async fn run_in_job_dir<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
) -> StepReport {
    let root = match make_root(&w.settings.work_dir, step) {
        Ok(root) => root,
        Err(e) => {
            let msg = format!("the worker cannot create a job directory: {e}");
            report_final(r, SubmissionUpdate::failed(&msg)).await;
            return StepReport {
                ending: Ending::Failed(msg),
                kept_root: None,
                program_exit: None,
            };
        }
    };
    let mut program_exit = None;
    let ending = match steps(w, r, step, cancel, soft_deadline, &root, &mut program_exit).await {
        Ok(ending) => ending,
        Err(f) => {
            if let Some((kind, text)) = &f.report {
                let _ = r
                    .update(SubmissionUpdate::failure_report(
                        *kind,
                        text,
                        step.is_scoring,
                    ))
                    .await;
                r.live(LiveKind::ErrorLogs, text);
            } else {
                r.live(LiveKind::ErrorLogs, &f.message);
            }
            report_final(r, SubmissionUpdate::failed(&f.message)).await;
            Ending::Failed(f.message)
        }
    };
    let kept_root = if w.settings.keep_job_dir {
        tracing::info!(root = %root.display(), "CODALAB_IGNORE_CLEANUP_STEP: keeping the job directory");
        Some(root)
    } else {
        remove_root(&w.sandbox, &root);
        None
    };
    StepReport {
        ending,
        kept_root,
        program_exit,
    }
}

/// A final status must reach the site, or the submission hangs: retry it.
async fn report_final<R: Reporter>(r: &R, update: SubmissionUpdate) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=5 {
        match r.update(update.clone()).await {
            Ok(()) => return,
            Err(e) if attempt < 5 => {
                tracing::warn!(attempt, error = %e, "status update failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => tracing::error!(error = %e, "status update failed; giving up"),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn make_root(work_dir: &Path, step: &Step) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(work_dir)?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let root = work_dir.join(format!(
        "uPK-{}_sID-{}__{:x}{:x}",
        step.user_pk,
        step.submission_id,
        stamp,
        std::process::id()
    ));
    std::fs::create_dir(&root)?;
    set_mode(&root, 0o700)?;
    let mut dirs = vec!["output", "bundles", "logs"];
    if step.is_scoring {
        dirs.extend(["input", "shared"]);
    }
    for d in dirs {
        std::fs::create_dir_all(root.join(d))?;
    }
    Ok(root)
}

fn remove_root(sandbox: &SandboxConfig, root: &Path) {
    if std::fs::remove_dir_all(root).is_ok() || !root.exists() {
        return;
    }
    // Files written by a non-root user of the image belong to subordinate ids.
    match sandbox.remove_as_root(vec![root.to_path_buf()]) {
        Ok(errors) if errors.is_empty() => {}
        Ok(errors) => tracing::warn!(?errors, "could not remove the job directory"),
        Err(e) => tracing::warn!(error = %e, "could not remove the job directory"),
    }
}

async fn steps<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
    root: &Path,
    program_exit: &mut Option<i32>,
) -> Result<Ending, Failure> {
    let s = &w.settings;
    if let Err(e) = r
        .update(SubmissionUpdate::running_on(&s.hostname, step.is_scoring))
        .await
    {
        tracing::warn!(error = %e, "could not report Running");
    }
    if !step.is_scoring {
        if let Err(e) = r.update(SubmissionUpdate::status(Status::Preparing)).await {
            tracing::warn!(error = %e, "could not report Preparing");
        }
    }

    let download = s.metrics.phase_clock(Phase::Download);
    for (slot, source) in &step.bundles {
        let dest = root.join(slot.dir());
        std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let md5 = r.fetch(*slot, source, &dest, &root.join("bundles")).await?;
        if let (Slot::Program, false, Some(md5)) = (slot, step.is_scoring, md5) {
            let u = SubmissionUpdate {
                md5: Some(md5),
                ..Default::default()
            };
            if let Err(e) = r.update(u).await {
                tracing::warn!(error = %e, "could not report the submission's md5");
            }
        }
        if cancel.is_cancelled() {
            return Ok(Ending::Cancelled);
        }
    }

    drop(download);

    let pull = s.metrics.phase_clock(Phase::Pull);
    let image = w.images.resolve(&step.image).await.map_err(|e| Failure {
        message: format!(
            "Pull for {} failed! Check the logs for more information",
            step.image
        ),
        report: Some((FailureType::DockerImagePullFail, e)),
    })?;
    drop(pull);
    if let Some(hit) = image.cache_hit {
        s.metrics.image_lookup(hit);
    }
    if cancel.is_cancelled() {
        return Ok(Ending::Cancelled);
    }

    // The site's soft limit counts from receipt: past it, the site has
    // given up on this task, so nothing more is started.
    let now = Instant::now();
    if soft_deadline.is_some_and(|d| d <= now) {
        return Err(layout::soft_time_limit_message().into());
    }
    // The clock starts now: downloads and the pull are not the participant's time.
    let deadline = layout::run_deadline(now, step.execution_time_limit, soft_deadline);
    let soft_limit_first = soft_deadline.is_some() && deadline == soft_deadline;
    let output = root.join("output");
    // Held until the step ends: the slot's GPUs and cpuset are this job's.
    let lease = match &s.slots {
        Some(plan) => Some(
            plan.lease()
                .ok_or("the worker has no free slot for this job (more jobs than --slots)")?,
        ),
        None => None,
    };
    let mut runs = Vec::new();
    for kind in [ProgramKind::Program, ProgramKind::Ingestion] {
        if let Some(mut spec) = program_spec(w, step, root, kind, &image)? {
            if let Some(lease) = &lease {
                let name = kind_name(kind, step.is_scoring);
                let gpus = lease
                    .apply(&mut spec)
                    .map_err(|e| format!("The {name} cannot get its GPUs: {e}"))?;
                if !gpus.is_empty() {
                    tracing::info!(slot = lease.index, gpus = %gpus.join("; "), "the {name} runs with GPUs");
                }
            }
            runs.push((kind, spec));
        }
    }
    let mut watcher = step
        .uploads
        .detailed_results
        .as_ref()
        .map(|target| DetailedResults::new(target.clone(), output.clone()));
    let mut driven = Vec::new();
    for (kind, spec) in runs {
        match program::start(w.sandbox.clone(), spec).await {
            Ok(running) => driven.push((kind, running)),
            Err(e) => {
                for (_, d) in &driven {
                    d.killer.kill();
                }
                for (_, d) in driven {
                    let _ = d.exit.await;
                }
                return Err(format!(
                    "the {} could not be started: {e}",
                    kind_name(kind, step.is_scoring)
                )
                .into());
            }
        }
    }
    let run = s.metrics.phase_clock(Phase::Run);
    let (outcomes, stop) = drive(
        r,
        driven,
        deadline,
        cancel,
        s.log_cap,
        root,
        watcher.as_mut().map(|w| (w, s.detailed_results_interval)),
    )
    .await;
    drop(run);
    // Logs, then the result zip: made and uploaded.
    let upload = s.metrics.phase_clock(Phase::Upload);
    if let Some(watcher) = &mut watcher {
        watcher.check(r, true).await;
    }
    upload_logs(r, step, root).await;

    let pick = |k: ProgramKind| {
        outcomes
            .iter()
            .find(|(kind, _, _)| *kind == k)
            .map(|(_, o, elapsed)| ProgramOutcome {
                exit_code: o.map(|o| o.exit_code()),
                elapsed: Some(*elapsed),
            })
            .unwrap_or_default()
    };
    let (prog, ingest) = (pick(ProgramKind::Program), pick(ProgramKind::Ingestion));
    *program_exit = prog.exit_code;
    match stop {
        Stop::Cancelled => return Ok(Ending::Cancelled),
        // As Celery's SoftTimeLimitExceeded in Codabench's worker: only a
        // Failed status, no time-limit report.
        Stop::TimedOut if soft_limit_first => {
            return Err(layout::soft_time_limit_message().into());
        }
        Stop::TimedOut => {
            let msg = layout::time_limit_message(step.execution_time_limit);
            return Err(Failure {
                message: msg.clone(),
                report: Some((FailureType::ExecutionTimeLimitExceeded, msg)),
            });
        }
        Stop::Done => {}
    }
    for (kind, outcome, _) in &outcomes {
        match outcome {
            Some(Outcome::OomKilled) => {
                return Err(format!(
                    "The {} ran out of memory (limit {} MiB) and was killed.",
                    kind_name(*kind, step.is_scoring),
                    s.limits.memory.unwrap_or(0) >> 20
                )
                .into())
            }
            None => {
                return Err(format!(
                    "The worker lost track of the {}; see the worker logs.",
                    kind_name(*kind, step.is_scoring)
                )
                .into())
            }
            _ => {}
        }
    }

    if step.is_scoring && prog.exit_code.is_some_and(|c| c != 0) {
        return Err(format!(
            "The scoring program failed (exit code {}). See the scoring logs for details.",
            prog.exit_code.unwrap_or_default()
        )
        .into());
    }
    let scores = if step.is_scoring {
        Some(results::read_scores(&output).map_err(|e| e.to_string())?)
    } else {
        None
    };
    results::write_output_metadata(&output, prog, ingest)?;
    let zip = root.join("output.zip");
    super::bundle::zip_dir_contents(&output, &zip)
        .map_err(|e| format!("zipping the output: {e}"))?;
    if let Some(target) = &step.uploads.result {
        r.upload(target, &zip, UploadKind::Zip)
            .await
            .map_err(|e| format!("uploading the result: {e}"))?;
    }
    drop(upload);
    match scores {
        None => {
            // After the upload: the scoring step may start as soon as the
            // site sees `Scoring`, and must find the prediction there.
            report_final(r, SubmissionUpdate::status(Status::Scoring)).await;
            Ok(Ending::Scoring)
        }
        Some(scores) => {
            r.scores(&scores)
                .await
                .map_err(|e| format!("posting the scores: {e}"))?;
            report_final(r, SubmissionUpdate::status(Status::Finished)).await;
            Ok(Ending::Finished { scores })
        }
    }
}

fn kind_name(kind: ProgramKind, is_scoring: bool) -> &'static str {
    match (kind, is_scoring) {
        (ProgramKind::Ingestion, _) => "ingestion program",
        (ProgramKind::Program, true) => "scoring program",
        (ProgramKind::Program, false) => "submission",
    }
}

/// The sandbox run of `kind`, or `None` when there is nothing to run.
fn program_spec(
    w: &Worker,
    step: &Step,
    root: &Path,
    kind: ProgramKind,
    image: &ResolvedImage,
) -> Result<Option<RunSpec>, Failure> {
    let dir = root.join(match kind {
        ProgramKind::Program => "program",
        ProgramKind::Ingestion => "ingestion_program",
    });
    if !dir.is_dir() {
        return Ok(None);
    }
    let name = kind_name(kind, step.is_scoring);
    let metadata =
        command::read_metadata(&dir).map_err(|e| format!("reading the {name}'s metadata: {e}"))?;
    let cmd = match (metadata, kind) {
        (Metadata::Command(c), _) => c,
        (Metadata::Missing, ProgramKind::Program) => {
            // A result submission: its files are the predictions.
            super::bundle::copy_dir(&dir, &root.join("output"))
                .map_err(|e| format!("copying the result submission: {e}"))?;
            return Ok(None);
        }
        (Metadata::NoCommand, ProgramKind::Program) => {
            tracing::warn!("{name} has metadata without a command: nothing to run");
            return Ok(None);
        }
        (Metadata::Missing, ProgramKind::Ingestion) => return Err(command::MISSING_METADATA.into()),
        (Metadata::NoCommand, ProgramKind::Ingestion) => {
            return Err(command::MISSING_COMMAND.into())
        }
    };
    let cmd = command::substitute(
        &cmd,
        kind,
        step.is_scoring,
        step.ingestion_only_during_scoring,
    );
    // The image's Entrypoint stays, as with docker-py (Cmd = the command).
    let mut argv: Vec<String> = image.config.entrypoint.clone().unwrap_or_default();
    argv.extend(command::split_argv(&cmd).map_err(|e| format!("the {name}'s command: {e}"))?);

    let s = &w.settings;
    let plan = MountPlan {
        root,
        data_dir: s.data_dir.as_deref().filter(|d| d.is_dir()),
        is_scoring: step.is_scoring,
        ingestion_only_during_scoring: step.ingestion_only_during_scoring,
        has_input_data: root.join("input_data").is_dir(),
    };
    let mut run = RunSpec::new(PathBuf::new(), argv);
    run.layers = image.layers.clone();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in image.config.env.iter().flatten().chain(std::iter::once(
        &crate::sandbox::types::DEFAULT_PATH.to_string(),
    )) {
        if let Some((k, v)) = kv.split_once('=') {
            env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    for (k, v) in layout::container_env(&s.http_proxy, &s.https_proxy) {
        env.insert(k, v);
    }
    run.env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    run.cwd = layout::WORKDIR.into();
    if let Some(u) = image.config.user.as_ref().filter(|u| !u.is_empty()) {
        if let Ok(ids) = crate::cli::parse_user(u) {
            (run.uid, run.gid) = ids;
        }
    }
    run.binds = layout::mounts(kind, &plan)
        .into_iter()
        .map(|m| Bind {
            source: m.source,
            destination: m.destination.into(),
            read_only: m.read_only,
        })
        .collect();
    for b in &run.binds {
        std::fs::create_dir_all(&b.source)
            .map_err(|e| format!("creating {}: {e}", b.source.display()))?;
        // Writable for whatever user the image runs as; the job root is
        // private to the worker's user, so nobody else on the host gets in.
        if !b.read_only {
            set_mode(&b.source, 0o777).map_err(|e| format!("chmod {}: {e}", b.source.display()))?;
        }
    }
    run.network = if s.network {
        Network::Host
    } else {
        Network::None
    };
    run.limits = s.limits.clone();
    run.hostname = format!(
        "{}-{}",
        if step.is_scoring {
            "scoring"
        } else {
            "ingestion"
        },
        step.submission_id
    );
    Ok(Some(run))
}

/// Stream output, enforce the deadline, watch the detailed results, and
/// collect each program's outcome and elapsed time. Logs are written under
/// `root/logs`.
async fn drive<R: Reporter>(
    r: &R,
    programs: Vec<(ProgramKind, program::Running)>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
    log_cap: usize,
    root: &Path,
    mut watcher: Option<(&mut DetailedResults, Duration)>,
) -> (Vec<(ProgramKind, Option<Outcome>, Duration)>, Stop) {
    let started = Instant::now();
    let mut killers = Vec::new();
    let mut runs = Vec::new();
    for (kind, p) in programs {
        killers.push(p.killer);
        runs.push(collect(r, kind, p.output, p.exit, log_cap, root, started));
    }
    let all = futures_util::future::join_all(runs);
    tokio::pin!(all);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let every = watcher
        .as_ref()
        .map_or(Duration::from_secs(3600), |(_, e)| *e);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let stop = loop {
        tokio::select! {
            res = &mut all => return (res, Stop::Done),
            _ = &mut sleep => break Stop::TimedOut,
            _ = cancel.cancelled() => break Stop::Cancelled,
            _ = tick.tick(), if watcher.is_some() => {
                if let Some((w, _)) = watcher.as_mut() {
                    w.check(r, false).await;
                }
            }
        }
    };
    for k in &killers {
        k.kill();
    }
    (all.await, stop)
}

/// Forward one program's output to the live log and the capped captures,
/// then wait for its end.
async fn collect<R: Reporter>(
    r: &R,
    kind: ProgramKind,
    mut output: tokio::sync::mpsc::Receiver<(Stream, Vec<u8>)>,
    exit: tokio::task::JoinHandle<Result<Outcome, crate::sandbox::SandboxError>>,
    log_cap: usize,
    root: &Path,
    started: Instant,
) -> (ProgramKind, Option<Outcome>, Duration) {
    let live = match kind {
        ProgramKind::Program => LiveKind::Program,
        ProgramKind::Ingestion => LiveKind::Ingestion,
    };
    let mut out = results::LogCapture::new(log_cap);
    let mut err = results::LogCapture::new(log_cap);
    while let Some((stream, chunk)) = output.recv().await {
        r.live(live, &String::from_utf8_lossy(&chunk));
        match stream {
            Stream::Stdout => out.push(&chunk),
            Stream::Stderr => err.push(&chunk),
        }
    }
    let outcome = match exit.await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sandbox failure");
            err.push(format!("\n[compute-worker: the sandbox failed: {e}]\n").as_bytes());
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "sandbox task failure");
            None
        }
    };
    let elapsed = started.elapsed();
    let prefix = match kind {
        ProgramKind::Program => "",
        ProgramKind::Ingestion => "ingestion_",
    };
    for (name, cap) in [("stdout", out), ("stderr", err)] {
        let path = root.join("logs").join(format!("{prefix}{name}"));
        if let Err(e) = std::fs::write(&path, cap.finish()) {
            tracing::warn!(error = %e, path = %path.display(), "could not save a log");
        }
    }
    (kind, outcome, elapsed)
}

/// Upload the captured logs that are not empty.
async fn upload_logs<R: Reporter>(r: &R, step: &Step, root: &Path) {
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
/// it changes while the programs run, and once more at the end.
struct DetailedResults {
    target: String,
    output: PathBuf,
    last: Option<SystemTime>,
}

fn detailed_results_file(output: &Path) -> Option<PathBuf> {
    let main = output.join("detailed_results.html");
    if main.is_file() {
        return Some(main);
    }
    let mut html: Vec<PathBuf> = std::fs::read_dir(output)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "html") && p.is_file())
        .collect();
    html.sort();
    html.into_iter().next()
}

impl DetailedResults {
    fn new(target: String, output: PathBuf) -> Self {
        DetailedResults {
            target,
            output,
            last: None,
        }
    }

    /// Upload the page if it changed (or, at the end, if it exists at all).
    async fn check<R: Reporter>(&mut self, r: &R, last_time: bool) {
        let Some(file) = detailed_results_file(&self.output) else {
            if last_time {
                tracing::warn!("detailed results were not written before the end of the run");
            }
            return;
        };
        let mtime = file.metadata().and_then(|m| m.modified()).ok();
        if mtime == self.last && !last_time {
            return;
        }
        self.last = mtime;
        match r.upload(&self.target, &file, UploadKind::Html).await {
            Ok(()) => r.live(LiveKind::DetailedResults, ""),
            Err(e) => tracing::warn!(error = %e, "detailed results upload failed"),
        }
    }
}
