//! One Codabench job step, from the task to the final report.
//!
//! Order (protocol §3.2, with the Python worker's bugs left out):
//! `Running` + hostname → (`Preparing`) → bundles (+ md5) → image → both
//! programs in parallel under one wall-clock limit → logs → result zip
//! uploaded → `Scoring` (prediction) or scores + `Finished` (scoring).
//! Every failure ends in `Failed` with a message a participant can act on,
//! and nothing of the sandboxes outlives the step.
//!
//! The phases live in their own files: [`step`](super::step) (what a step
//! is, the reporter), [`settings`](super::settings), [`image`](super::image)
//! (resolution and pull), [`spec`](super::spec) (each program's sandbox
//! run), [`drive`](super::drive) (running them), [`publish`](super::publish)
//! (logs and detailed results).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::command::ProgramKind;
use super::drive::{drive, Ended, Stop};
use super::error::JobError;
use super::image::ResolvedImage;
use super::kept_prediction;
use super::layout;
use super::program;
use super::publish::{upload_logs, DetailedResults};
use super::resources::{self as resource_report, ResourceReport};
use super::results::{self, ProgramOutcome};
use super::spec::{kind_name, program_spec, set_mode};
use super::timings::{ImageSource, Stage, Timings};
use super::worker_slots::SlotLease;
use crate::gpu::usage::Sampler;
use crate::metrics::Phase;
use crate::sandbox::{Outcome, RunSpec, SandboxConfig};
use crate::site::live::LiveKind;
use crate::site::{FailureType, Status, SubmissionUpdate, UploadKind};

pub use super::image::Images;
pub use super::settings::{Settings, Worker};
pub use super::step::{Ending, Protocol, Reporter, Slot, Step, Uploads};

/// What a step left behind.
#[derive(Debug)]
pub struct StepReport {
    pub ending: Ending,
    /// The job's root directory, when kept.
    pub kept_root: Option<PathBuf>,
    /// The output folder of the step (inside the kept root).
    pub program_exit: Option<i32>,
    /// What each program that ran used.
    pub resources: Vec<super::resources::ResourceReport>,
    /// Where the step's time went, from the task's receipt.
    pub timings: super::timings::Timings,
}

/// Run one step of a task received at `received`. Never panics on bad
/// input; every path reports.
pub async fn run_step<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
    received: Instant,
) -> StepReport {
    let metrics = &w.settings.metrics;
    let _busy = metrics.busy_slot();
    // HITL: task and worker must agree, before anything else is sent.
    if let Err(msg) = super::hitl::check_config(step, &w.settings.hitl) {
        return refuse(w, r, step.is_scoring, msg).await;
    }
    let mut record = Record {
        program_exit: None,
        timings: Timings::since(received),
        resources: Vec::new(),
    };
    let (ending, kept_root) = run_in_job_dir(w, r, step, cancel, soft_deadline, &mut record).await;
    record.timings.finish();
    tracing::info!("{}", record.timings);
    for (stage, took) in record.timings.stages() {
        metrics.stage(stage.label(), took);
    }
    metrics.job_ended(step.is_scoring, ending.outcome());
    StepReport {
        ending,
        kept_root,
        program_exit: record.program_exit,
        resources: record.resources,
        timings: record.timings,
    }
}

/// What the phases leave for the step's report.
struct Record {
    program_exit: Option<i32>,
    timings: Timings,
    resources: Vec<ResourceReport>,
}

/// Fail a task before anything of it runs (a task this worker must not or
/// cannot run): `Failed` with `msg` is the only thing the site hears.
pub async fn refuse<R: Reporter>(w: &Worker, r: &R, is_scoring: bool, msg: String) -> StepReport {
    tracing::error!("{msg}");
    report_final(r, SubmissionUpdate::failed(&msg)).await;
    let ending = Ending::Failed(msg);
    w.settings.metrics.job_ended(is_scoring, ending.outcome());
    let mut timings = Timings::since(Instant::now());
    timings.finish();
    StepReport {
        ending,
        kept_root: None,
        program_exit: None,
        resources: Vec::new(),
        timings,
    }
}

async fn run_in_job_dir<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
    record: &mut Record,
) -> (Ending, Option<PathBuf>) {
    let keep_here = kept_prediction::applies(w.settings.keep_predictions_here, step);
    let adapted;
    let step = if keep_here {
        tracing::info!(
            "COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD: the prediction stays on this host; \
             the scoring step must run on this worker too"
        );
        adapted = kept_prediction::adapt(step, &w.settings.work_dir);
        &adapted
    } else {
        step
    };
    let root = match make_root(w, step, keep_here) {
        Ok(root) => root,
        Err(e) => {
            let msg = format!("the worker cannot create a job directory: {e}");
            record.timings.enter(Stage::FinalStatus);
            report_final(r, SubmissionUpdate::failed(&msg)).await;
            return (Ending::Failed(msg), None);
        }
    };
    let ending = match steps(w, r, step, cancel, soft_deadline, &root, record).await {
        Ok(ending) => ending,
        Err(f) => {
            record.timings.enter(Stage::FinalStatus);
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
    record.timings.enter(Stage::Cleanup);
    let kept_root = if w.settings.keep_job_dir {
        tracing::info!(root = %root.display(), "COMPUTE_WORKER_NO_CLEANUP: keeping the job directory");
        Some(root)
    } else {
        remove_root(&w.sandbox, &root);
        None
    };
    (ending, kept_root)
}

/// A final status must reach the site, or the submission hangs: retry it.
/// The live lines go first: whoever sees the final status has them all.
/// Except `Scoring` after any HTTP answer: the site queues the scoring
/// step before it saves the status, so an error answer may come after the
/// scoring was queued, and a retry would score the submission twice
/// (Codabench issues #2419, #2557). Only a request that got no answer at
/// all is sent again then.
async fn report_final<R: Reporter>(r: &R, update: SubmissionUpdate) {
    r.flush_live().await;
    let mut delay = Duration::from_secs(1);
    let once_answered = update.status == Some(Status::Scoring);
    for attempt in 1..=5 {
        match r.update(update.clone()).await {
            Ok(()) => return,
            Err(e) if once_answered && !e.transient => {
                tracing::error!(error = %e, "the site answered the Scoring update with an error; \
                    not sending it again (the site may have queued the scoring step already)");
                return;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(attempt, error = %e, "status update failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => tracing::error!(error = %e, "status update failed; giving up"),
        }
    }
}

/// The step's job directory, private to the worker. v1.27 tasks get the
/// fixed names of Codabench's worker ([`kept_prediction::named_root`]); a
/// directory an earlier run of the task left there (kept, or a crash) does
/// not stop this one, unlike upstream: it gets a unique name, or, when
/// this prediction is to be kept here, the earlier one is replaced.
fn make_root(w: &Worker, step: &Step, keep_here: bool) -> std::io::Result<PathBuf> {
    let work_dir = &w.settings.work_dir;
    crate::sandbox::rundir::create_private_dir(work_dir)?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let unique = work_dir.join(format!(
        "uPK-{}_sID-{}__{stamp:x}{:x}",
        step.user_pk,
        step.submission_id,
        std::process::id()
    ));
    let root = match step.protocol {
        Protocol::Legacy => unique,
        Protocol::Current => {
            let named = kept_prediction::named_root(work_dir, step, step.is_scoring);
            if named.exists() && keep_here && !step.is_scoring {
                tracing::warn!(earlier = %named.display(), "replacing the kept prediction of an earlier run of this task");
                remove_root(&w.sandbox, &named);
            }
            if named.exists() {
                tracing::warn!(earlier = %named.display(), "a directory of an earlier run of this task is in the way; using {}", unique.display());
                unique
            } else {
                named
            }
        }
    };
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

/// The step as a sequence of named phases.
async fn steps<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    cancel: &CancellationToken,
    soft_deadline: Option<Instant>,
    root: &Path,
    record: &mut Record,
) -> Result<Ending, JobError> {
    let s = &w.settings;
    record.timings.enter(Stage::BundlesDownloaded);
    announce(w, r, step).await;

    let download = s.metrics.phase_clock(Phase::Download);
    fetch_bundles(w, r, step, root, cancel).await?;
    drop(download);
    if cancel.is_cancelled() {
        return Ok(Ending::Cancelled);
    }

    record.timings.enter(Stage::ImageReady);
    let pull = s.metrics.phase_clock(Phase::Pull);
    if !s.allow_image_pull {
        super::image_policy::check_local(&w.images, &step.image)?;
    }
    let image = w
        .images
        .resolve(&step.image, s.pull_retry_delay, w.bundle_cache.clone())
        .await?;
    drop(pull);
    announce_image_ready(r, step).await;
    if let Some(hit) = image.cache_hit {
        s.metrics.image_lookup(hit);
    }
    record.timings.image = Some(match image.cache_hit {
        Some(true) => (ImageSource::Cached, 0),
        Some(false) => (ImageSource::Pulled, image.fetched),
        None => (ImageSource::Rootfs, 0),
    });
    if cancel.is_cancelled() {
        return Ok(Ending::Cancelled);
    }

    record.timings.enter(Stage::SandboxUp);
    let (deadline, soft_limit_first) = run_deadline(step, soft_deadline)?;
    // Held until the step ends: the slot's GPUs and cpuset are this job's.
    let lease = match &s.slots {
        Some(plan) => Some(
            plan.lease()
                .ok_or("the worker has no free slot for this job (more jobs than --slots)")?,
        ),
        None => None,
    };
    let runs = program_runs(w, step, root, &image, lease.as_ref())?;
    // HITL: detailed results wait for the operator too.
    let hitl = super::hitl::gates(step, &s.hitl);
    let mut watcher = step
        .uploads
        .detailed_results
        .as_ref()
        .filter(|_| !hitl)
        .map(|target| DetailedResults::new(target.clone(), root, s.bounds.parsed()));
    tracing::info!(
        "each program's bounds: {}",
        w.sandbox.bounds_described(&s.limits)
    );
    tracing::info!(
        id_mode = w.sandbox.id_mode.name(),
        "each program's ids: {}",
        w.sandbox.id_mode.describe()
    );
    let gpu_uuids = lease.as_ref().map(SlotLease::gpu_uuids).unwrap_or_default();
    let driven = start_programs(w, step, runs).await?;
    // Never holds up the job: it samples on a thread of its own.
    let gpu_sampler = (!gpu_uuids.is_empty()).then(|| Sampler::start(gpu_uuids));

    record.timings.enter(Stage::ProgramDone);
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
    let gpus = match gpu_sampler {
        Some(sampler) => Some(sampler.finish().await),
        None => None,
    };
    record.timings.enter(Stage::OutputsUploaded);
    record.resources = resource_report::report(
        step,
        &outcomes,
        s.limits.memory,
        gpus.as_ref(),
        root,
        &s.metrics,
    );

    // Logs, then the result zip: made and uploaded.
    let upload = s.metrics.phase_clock(Phase::Upload);
    if let Some(watcher) = &mut watcher {
        watcher.check(r, true).await;
    }
    upload_logs(r, step, root).await;
    let (prog, ingest) = (
        outcome_of(&outcomes, ProgramKind::Program),
        outcome_of(&outcomes, ProgramKind::Ingestion),
    );
    record.program_exit = prog.exit_code;
    match stop {
        Stop::Cancelled => return Ok(Ending::Cancelled),
        // As Celery's SoftTimeLimitExceeded in Codabench's worker: only a
        // Failed status, no time-limit report.
        Stop::TimedOut if soft_limit_first => {
            return Err(layout::soft_time_limit_message().into());
        }
        Stop::TimedOut => {
            let msg = layout::time_limit_message(step.execution_time_limit);
            return Err(JobError::new(msg.clone())
                .with_report(FailureType::ExecutionTimeLimitExceeded, msg));
        }
        Stop::Done => {}
    }
    check_outcomes(w, step, &outcomes, &prog)?;
    let output = root.join("output");
    let scores = if step.is_scoring {
        Some(results::read_scores(&output, s.bounds.parsed()).map_err(|e| e.to_string())?)
    } else {
        None
    };
    if let (true, Some(scores)) = (hitl, &scores) {
        let waited =
            super::hitl::await_decision(r, &s.hitl, step, &output, scores, cancel, soft_deadline);
        if waited.await? == super::hitl::Waited::Cancelled {
            return Ok(Ending::Cancelled);
        }
        if let Some(target) = &step.uploads.detailed_results {
            DetailedResults::new(target.clone(), root, s.bounds.parsed())
                .check(r, true)
                .await;
        }
    }
    let result = publish_results(r, step, root, prog, ingest).await;
    drop(upload);
    result?;
    record.timings.enter(Stage::FinalStatus);
    report_ending(r, scores).await
}

/// The step's first statuses, with this worker's hostname. Legacy sites:
/// `Running` + hostname, then `Preparing` (prediction only). Sites from
/// v1.27 on: `Preparing` + hostname (prediction) or `Running` + hostname
/// (scoring); a plain `Running` follows once the image is ready
/// ([`announce_image_ready`]).
async fn announce<R: Reporter>(w: &Worker, r: &R, step: &Step) {
    let mut first = SubmissionUpdate::running_on(&w.settings.hostname, step.is_scoring);
    if step.protocol == Protocol::Current && !step.is_scoring {
        first.status = Some(Status::Preparing);
    }
    let mut updates = vec![first];
    if step.protocol == Protocol::Legacy && !step.is_scoring {
        updates.push(SubmissionUpdate::status(Status::Preparing));
    }
    for u in updates {
        if let Err(e) = r.update(u).await {
            tracing::warn!(error = %e, "could not report the step's start");
        }
    }
}

/// Sites from v1.27 on hear `Running` once the image is ready.
async fn announce_image_ready<R: Reporter>(r: &R, step: &Step) {
    if step.protocol != Protocol::Current {
        return;
    }
    if let Err(e) = r.update(SubmissionUpdate::status(Status::Running)).await {
        tracing::warn!(error = %e, "could not report Running");
    }
}

/// Every bundle into its slot; the submission's md5 reported.
async fn fetch_bundles<R: Reporter>(
    w: &Worker,
    r: &R,
    step: &Step,
    root: &Path,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    // The bundle whose md5 the site stores.
    let submission = match step.protocol {
        Protocol::Legacy => Slot::Program,
        Protocol::Current => Slot::Submission,
    };
    for (slot, source) in &step.bundles {
        let dest = root.join(slot.dir());
        std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        if *slot == Slot::KeptPrediction {
            kept_prediction::take(Path::new(source), &dest)?;
            continue;
        }
        let md5 = fetch_making_room(w, r, *slot, source, &dest, root).await?;
        if let (true, false, Some(md5)) = (*slot == submission, step.is_scoring, md5) {
            let u = SubmissionUpdate {
                md5: Some(md5),
                ..Default::default()
            };
            if let Err(e) = r.update(u).await {
                tracing::warn!(error = %e, "could not report the submission's md5");
            }
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
    }
    if step.protocol == Protocol::Current && step.is_scoring {
        merge_submission_into_predictions(root);
    }
    Ok(())
}

/// Fetch one bundle into `dest`. A disk that is full (or a quota used up)
/// gets room, every image and cached bundle no running job holds on its
/// file system evicted (least recently used first), and the bundle is
/// fetched once more; if it still does not fit, the step fails naming the
/// directory and the space left.
async fn fetch_making_room<R: Reporter>(
    w: &Worker,
    r: &R,
    slot: Slot,
    source: &str,
    dest: &Path,
    root: &Path,
) -> Result<Option<String>, JobError> {
    let scratch = root.join("bundles");
    let e = match r.fetch(slot, source, dest, &scratch).await {
        Ok(md5) => return Ok(md5),
        Err(e) if e.no_space => e,
        Err(e) => return Err(e.message.into()),
    };
    let store = match &w.images {
        Images::Store(s) => Some(s.clone()),
        Images::Rootfs(_) => None,
    };
    let (cache, full) = (w.bundle_cache.clone(), dest.to_path_buf());
    // What this try left is not worth keeping.
    let _ = std::fs::remove_dir_all(dest).and_then(|()| std::fs::create_dir_all(dest));
    let evicted = tokio::task::spawn_blocking(move || {
        super::room::make_room(store.as_ref(), cache.as_deref(), &full, u64::MAX)
    })
    .await
    .unwrap_or_default();
    tracing::warn!(
        "the disk of {} is full while fetching {}: {}; trying once more ({})",
        dest.display(),
        slot.key(),
        evicted.describe(),
        e.message
    );
    match r.fetch(slot, source, dest, &scratch).await {
        Ok(md5) => Ok(md5),
        Err(e) if e.no_space => Err(format!(
            "no space left in {} for {}: {} free after evicting every image and cached bundle \
             no job uses: {}",
            root.display(),
            slot.key(),
            crate::units::human(evicted.free),
            e.message
        )
        .into()),
        Err(e) => Err(e.message.into()),
    }
}

/// Sites from v1.27 on: the submission is copied over the predictions in
/// `input/res`, as Codabench's worker does ("temporary compatibility
/// hook"), so that a result submission reaches the scoring program there.
/// A failed copy is logged, as upstream.
fn merge_submission_into_predictions(root: &Path) {
    let (from, to) = (root.join(Slot::Submission.dir()), root.join("input/res"));
    if let Err(e) = super::bundle::copy_dir(&from, &to) {
        tracing::warn!(error = %e, "copying the submission into input/res");
    }
}

/// When the programs must be done, and whether that is the site's soft
/// limit (rather than the competition's execution time limit).
fn run_deadline(
    step: &Step,
    soft_deadline: Option<Instant>,
) -> Result<(Option<Instant>, bool), JobError> {
    // The site's soft limit counts from receipt: past it, the site has
    // given up on this task, so nothing more is started.
    let now = Instant::now();
    if soft_deadline.is_some_and(|d| d <= now) {
        return Err(layout::soft_time_limit_message().into());
    }
    // The clock starts now: downloads and the pull are not the participant's time.
    let deadline = layout::run_deadline(now, step.execution_time_limit, soft_deadline);
    Ok((
        deadline,
        soft_deadline.is_some() && deadline == soft_deadline,
    ))
}

/// The sandbox runs of the step's programs, with the slot's GPUs.
fn program_runs(
    w: &Worker,
    step: &Step,
    root: &Path,
    image: &ResolvedImage,
    lease: Option<&SlotLease>,
) -> Result<Vec<(ProgramKind, RunSpec)>, JobError> {
    let mut runs = Vec::new();
    for kind in [ProgramKind::Program, ProgramKind::Ingestion] {
        if let Some(mut spec) = program_spec(w, step, root, kind, image)? {
            if let Some(lease) = lease {
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
    Ok(runs)
}

/// Start every run; when one cannot start, stop the others.
async fn start_programs(
    w: &Worker,
    step: &Step,
    runs: Vec<(ProgramKind, RunSpec)>,
) -> Result<Vec<(ProgramKind, LiveKind, program::Running)>, JobError> {
    let mut driven = Vec::new();
    for (kind, spec) in runs {
        match program::start(w.sandbox.clone(), spec).await {
            Ok(running) => driven.push((kind, step.live_kind(kind), running)),
            Err(e) => {
                for (_, _, d) in &driven {
                    d.killer.kill();
                }
                for (_, _, d) in driven {
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
    Ok(driven)
}

fn outcome_of(outcomes: &[Ended], k: ProgramKind) -> ProgramOutcome {
    outcomes
        .iter()
        .find(|e| e.kind == k)
        .map(|e| ProgramOutcome {
            exit_code: e.outcome.map(|o| o.exit_code()),
            elapsed: Some(e.elapsed),
        })
        .unwrap_or_default()
}

/// Fail on a killed or lost program, or a failed scoring program.
fn check_outcomes(
    w: &Worker,
    step: &Step,
    outcomes: &[Ended],
    prog: &ProgramOutcome,
) -> Result<(), JobError> {
    for Ended { kind, outcome, .. } in outcomes {
        match outcome {
            Some(Outcome::OomKilled) => {
                return Err(format!(
                    "The {} ran out of memory (limit {} MiB) and was killed.",
                    kind_name(*kind, step.is_scoring),
                    w.settings.limits.memory.unwrap_or(0) >> 20
                )
                .into())
            }
            Some(Outcome::WriteLimitExceeded) => {
                return Err(format!(
                    "The {} wrote more than {} MiB to disk (its image layer and the job's \
                     directories; the limit {}) and was killed.",
                    kind_name(*kind, step.is_scoring),
                    w.settings.limits.write_max.unwrap_or(0) >> 20,
                    super::bounds::WRITE_MAX
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
    Ok(())
}

/// `output/metadata` written, the output zipped and uploaded.
async fn publish_results<R: Reporter>(
    r: &R,
    step: &Step,
    root: &Path,
    prog: ProgramOutcome,
    ingest: ProgramOutcome,
) -> Result<(), JobError> {
    let output = root.join("output");
    results::write_output_metadata(&output, prog, ingest)?;
    let zip = root.join("output.zip");
    super::bundle::zip_dir_contents(&output, &zip)
        .map_err(|e| format!("zipping the output: {e}"))?;
    if let Some(target) = &step.uploads.result {
        r.upload(target, &zip, UploadKind::Zip)
            .await
            .map_err(|e| format!("uploading the result: {e}"))?;
    }
    Ok(())
}

/// `Scoring` (prediction), or the scores and `Finished` (scoring).
async fn report_ending<R: Reporter>(r: &R, scores: Option<Value>) -> Result<Ending, JobError> {
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
