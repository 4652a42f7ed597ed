//! `compute-worker run`: one submission through the prediction and scoring
//! steps on this machine, with no broker and no site. With no bundles it
//! runs the embedded demo competition on a rootfs made from the host's
//! busybox-static, entirely offline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::LocalRunArgs;
use crate::job::lifecycle::{
    self, Ending, Images, Protocol, Settings, Slot, Step, Uploads, Worker,
};
use crate::job::local::LocalReporter;
use crate::job::worker_slots::{PlanInput, SlotPlan};
use crate::sandbox::Network;

/// The demo competition, compiled into the binary.
const DEMO: &[(&str, &str)] = &[
    (
        "ingestion_program/metadata.yaml",
        include_str!("../../demo/ingestion_program/metadata.yaml"),
    ),
    (
        "ingestion_program/ingest.sh",
        include_str!("../../demo/ingestion_program/ingest.sh"),
    ),
    (
        "input_data/data.txt",
        include_str!("../../demo/input_data/data.txt"),
    ),
    (
        "reference_data/truth.txt",
        include_str!("../../demo/reference_data/truth.txt"),
    ),
    (
        "scoring_program/metadata.yaml",
        include_str!("../../demo/scoring_program/metadata.yaml"),
    ),
    (
        "scoring_program/score.sh",
        include_str!("../../demo/scoring_program/score.sh"),
    ),
    (
        "submission/predict.sh",
        include_str!("../../demo/submission/predict.sh"),
    ),
];

fn write_demo(dir: &Path) -> Result<()> {
    for (path, text) in DEMO {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(dir))?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// A rootfs made of the host's busybox-static (kept under the state dir).
fn busybox_rootfs(state_dir: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("the demo needs /bin/busybox: install it with `apt-get install busybox-static`, or give --image");
    }
    let root = state_dir.join("demo-rootfs");
    if root.join("bin/sh").exists() {
        return Ok(root);
    }
    let tmp = state_dir.join(format!(".demo-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "app"] {
        std::fs::create_dir_all(tmp.join(d))?;
    }
    std::fs::copy(busybox, tmp.join("bin/busybox"))?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet))?;
        }
    }
    std::fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::rename(&tmp, &root)?;
    Ok(root)
}

pub fn run(args: LocalRunArgs) -> Result<i32> {
    let limits = args.limits.limits();
    let sandbox = args
        .sandbox
        .config(Some(&limits), crate::host::Starts::Many)?;
    let results = std::path::absolute(&args.results)?;
    std::fs::create_dir_all(&results)?;

    let demo = args.submission.is_none();
    let bundles = if demo {
        let dir = results.join("demo-bundles");
        write_demo(&dir)?;
        eprintln!(
            "no --submission given: running the embedded demo competition (bundles in {})",
            dir.display()
        );
        Bundles {
            submission: dir.join("submission"),
            ingestion_program: Some(dir.join("ingestion_program")),
            input_data: Some(dir.join("input_data")),
            reference_data: Some(dir.join("reference_data")),
            scoring_program: Some(dir.join("scoring_program")),
        }
    } else {
        Bundles {
            submission: abs(args.submission.clone().unwrap_or_default())?,
            ingestion_program: args.ingestion_program.clone().map(abs).transpose()?,
            input_data: args.input_data.clone().map(abs).transpose()?,
            reference_data: args.reference_data.clone().map(abs).transpose()?,
            scoring_program: args.scoring_program.clone().map(abs).transpose()?,
        }
    };
    let (images, image_name) = match (&args.image, &args.rootfs) {
        (Some(reference), _) => (
            Images::Store(crate::host::open_store(
                &args.images.store_settings(),
                &sandbox,
            )?),
            reference.clone(),
        ),
        (None, Some(rootfs)) => {
            let rootfs = abs(rootfs.clone())?;
            if let Some(w) = crate::sandbox::rootfs_tree_warning(&rootfs, &sandbox.maps) {
                eprintln!("compute-worker run: warning: {w}");
            }
            (Images::Rootfs(rootfs), "local rootfs".into())
        }
        (None, None) if demo => (
            Images::Rootfs(busybox_rootfs(&sandbox.state_dir)?),
            "host busybox".into(),
        ),
        (None, None) => bail!(
            "give the competition image with --image REF (or a root filesystem with --rootfs DIR)"
        ),
    };
    let worker = Worker {
        sandbox: Arc::new(sandbox),
        images,
        settings: Settings {
            work_dir: results.join("jobs"),
            data_dir: args.data_dir.clone(),
            network: args.network.network != Network::None,
            network_mode: args.network.network,
            keep_job_dir: args.keep_job_dirs,
            limits,
            bounds: args.bounds.bounds(),
            pull_retry_delay: args.pull_retry.pull_retry_delay,
            slots: SlotPlan::new(PlanInput {
                slots: 1,
                use_gpu: args.gpus.is_some(),
                gpu_device: args.gpus.as_deref(),
                gpus_per_slot: 0,
                slot_cpus: &[],
                gpu_root: &args.gpu_root.gpu_root,
            })?,
            ..Settings::default()
        },
        bundle_cache: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the sandboxes");
            c.cancel();
        }
    });
    let ending = rt.block_on(run_steps(
        &worker,
        &args,
        &bundles,
        &image_name,
        &results,
        &cancel,
    ))?;
    match ending {
        Ending::Finished { scores } => {
            println!("{}", serde_json::to_string_pretty(&scores)?);
            eprintln!("results: {}", results.display());
            Ok(0)
        }
        Ending::Scoring => {
            eprintln!(
                "prediction done (no scoring program given); results: {}",
                results.display()
            );
            Ok(0)
        }
        Ending::Failed(message) => {
            eprintln!("failed: {message}\nresults and logs: {}", results.display());
            Ok(1)
        }
        Ending::Cancelled => Ok(130),
    }
}

struct Bundles {
    submission: PathBuf,
    ingestion_program: Option<PathBuf>,
    input_data: Option<PathBuf>,
    reference_data: Option<PathBuf>,
    scoring_program: Option<PathBuf>,
}

fn abs(p: PathBuf) -> Result<PathBuf> {
    if !p.exists() {
        bail!("{} does not exist", p.display());
    }
    Ok(std::path::absolute(&p)?)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn log_uploads(result: &str, detailed: bool) -> Uploads {
    Uploads {
        result: Some(result.into()),
        detailed_results: detailed.then(|| "detailed_results.html".into()),
        stdout: Some("stdout.txt".into()),
        stderr: Some("stderr.txt".into()),
        ingestion_stdout: Some("ingestion_stdout.txt".into()),
        ingestion_stderr: Some("ingestion_stderr.txt".into()),
    }
}

async fn run_steps(
    worker: &Worker,
    args: &LocalRunArgs,
    b: &Bundles,
    image: &str,
    results: &Path,
    cancel: &CancellationToken,
) -> Result<Ending> {
    let iods = args.ingestion_only_during_scoring;
    let protocol = if args.codabench == "1.27" {
        Protocol::Current
    } else {
        Protocol::Legacy
    };
    let (submission, scoring_program_slot) = match protocol {
        Protocol::Legacy => (Slot::Program, Slot::Program),
        Protocol::Current => (Slot::Submission, Slot::ScoringProgram),
    };
    // In the order the site's tasks name them.
    let ingestion = |b: &Bundles| {
        let mut v: Vec<(Slot, String)> = b
            .ingestion_program
            .as_deref()
            .map(|p| (Slot::IngestionProgram, s(p)))
            .into_iter()
            .collect();
        v.extend(b.input_data.as_deref().map(|p| (Slot::InputData, s(p))));
        v
    };
    let mut bundles = vec![(submission, s(&b.submission))];
    if !iods {
        bundles.extend(ingestion(b));
    }
    let prediction = Step {
        submission_id: 1,
        user_pk: 1,
        is_scoring: false,
        image: image.to_string(),
        execution_time_limit: args.time_limit,
        ingestion_only_during_scoring: iods,
        human_in_the_loop: false,
        protocol,
        bundles,
        uploads: log_uploads("prediction_result.zip", false),
    };
    let mut reporter = LocalReporter::new(results.join("prediction"), "prediction")?;
    reporter.unzip = worker.settings.bounds.unzip();
    let report = lifecycle::run_step(
        worker,
        &reporter,
        &prediction,
        cancel,
        None,
        std::time::Instant::now(),
    )
    .await;
    summary("prediction", &report);
    if report.ending != Ending::Scoring {
        return Ok(report.ending);
    }
    let Some(scoring_program) = &b.scoring_program else {
        return Ok(Ending::Scoring);
    };
    let mut bundles = vec![(scoring_program_slot, s(scoring_program))];
    if protocol == Protocol::Current {
        bundles.push((Slot::Submission, s(&b.submission)));
    }
    if iods {
        bundles.extend(ingestion(b));
    }
    bundles.extend(
        b.reference_data
            .as_deref()
            .map(|p| (Slot::ReferenceData, s(p))),
    );
    bundles.push((
        Slot::PredictionResult,
        s(&results.join("prediction/prediction_result.zip")),
    ));
    let scoring = Step {
        is_scoring: true,
        bundles,
        uploads: log_uploads("scoring_result.zip", true),
        ..prediction
    };
    let mut reporter = LocalReporter::new(results.join("scoring"), "scoring")?;
    reporter.unzip = worker.settings.bounds.unzip();
    let report = lifecycle::run_step(
        worker,
        &reporter,
        &scoring,
        cancel,
        None,
        std::time::Instant::now(),
    )
    .await;
    summary("scoring", &report);
    Ok(report.ending)
}

/// A step's summary on the terminal: each program's resources, and where
/// the time went.
fn summary(step: &str, report: &lifecycle::StepReport) {
    for r in &report.resources {
        eprintln!("[{step}] {r}");
    }
    eprintln!("[{step}] {}", report.timings);
}
