//! `compute-worker serve`: the drop-in for Codabench's compute worker.
//! Consumes `compute_worker_run` tasks and runs each job step against the
//! site, with the environment variables of Codabench's `.env`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::broker::task_step::step_from;
use crate::broker::{Consumer, ConsumerConfig, Disposition, Job};
use crate::cli::ServeArgs;
use crate::config::codabench::Codabench;
use crate::job::bundle_cache::BundleCache;
use crate::job::lifecycle::{self, Ending, Images, Settings, Worker};
use crate::job::remote::SiteReporter;
use crate::job::silent::Silent;
use crate::site::{SiteClient, UrlRewrite};

pub fn run(args: ServeArgs) -> Result<i32> {
    let codabench = Codabench::from_env()?;
    let broker = codabench.broker(args.verify_broker_tls || args.broker_ca_file.is_some())?;

    let limits = args.limits.limits();
    // Every limit a job may get: the flags', and a cpuset per slot.
    let mut wanted = limits.clone();
    if let Some(cpus) = args.slot_cpus.first() {
        wanted.cpus.get_or_insert_with(|| cpus.clone());
    }
    let sandbox = args
        .sandbox
        .config(Some(&wanted), crate::host::Starts::Many)?;
    if let Some(d) = &sandbox.cgroup {
        // Refuse at start what every job would fail on.
        d.check_limits(&wanted)
            .map_err(|why| anyhow::anyhow!("the limits cannot be enforced: {why}"))?;
    }
    let store = crate::host::open_store(&args.images.store_settings(), &sandbox)?;
    let slots = crate::job::worker_slots::SlotPlan::new(crate::job::worker_slots::PlanInput {
        slots: args.slots,
        use_gpu: codabench.use_gpu,
        gpu_device: codabench.gpu_device.as_deref(),
        gpus_per_slot: args.gpus_per_slot,
        slot_cpus: &args.slot_cpus,
        gpu_root: &args.gpu_root.gpu_root,
    })?;
    if args.network.network == crate::sandbox::Network::Host && !codabench.network_disabled {
        tracing::warn!(
            "COMPUTE_WORKER_NETWORK=host: programs run in this host's network namespace \
             (its 127.0.0.1 services, abstract unix sockets and ports are theirs)"
        );
    }
    let host_dir = codabench.host_directory.clone();
    // Job directories and the dataset cache (reference data among it) are
    // the worker's alone (`doctor` warns about an existing open one).
    crate::sandbox::rundir::create_private_dir(&host_dir)
        .map_err(|e| anyhow::anyhow!("creating HOST_DIRECTORY {}: {e}", host_dir.display()))?;
    let metrics = crate::metrics::Metrics::new();
    metrics.set_slots(args.slots.max(1));
    metrics.watch_image_store(store.clone());
    let settings = Settings {
        work_dir: host_dir.clone(),
        data_dir: Some(host_dir.join("data")),
        network: !codabench.network_disabled,
        network_mode: args.network.network,
        http_proxy: codabench.http_proxy.clone(),
        https_proxy: codabench.https_proxy.clone(),
        // Keeping the predictions here keeps the job directories, as upstream.
        keep_job_dir: codabench.keep_job_dirs || codabench.disable_prediction_upload,
        limits,
        slots,
        metrics: metrics.clone(),
        bounds: args.bounds.bounds(),
        hitl: crate::job::hitl::Hitl {
            enabled: codabench.human_in_the_loop,
            dir: crate::job::hitl::dir_of(&host_dir),
            ..Default::default()
        },
        allow_image_pull: codabench.allow_image_pull,
        pull_retry_delay: args.pull_retry.pull_retry_delay,
        keep_predictions_here: codabench.disable_prediction_upload,
        ..Settings::default()
    };
    let rewrite = codabench.bundle_url_rewrite.clone();
    let silent = codabench.disable_log_upload;
    if silent {
        tracing::info!(
            "COMPUTE_WORKER_DISABLE_LOG_UPLOAD: no live program output and no log uploads; \
             each job's logs stay in its logs/ directory under {} (removed with it unless \
             COMPUTE_WORKER_NO_CLEANUP)",
            host_dir.display()
        );
    }
    // The dataset cache (input_data, reference_data), as Codabench's
    // /codabench/cache, bounded by MAX_CACHE_DIR_SIZE_GB.
    let cache = match BundleCache::new(host_dir.join("cache"), codabench.max_cache_bytes) {
        Ok(c) => {
            let c = Arc::new(c);
            let cache = c.clone();
            metrics.watch_size(
                "bundle_cache_bytes",
                "Bytes held by the input_data/reference_data cache.",
                move || cache.total_bytes().ok(),
            );
            Some(c)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no bundle cache: {}", host_dir.join("cache").display());
            None
        }
    };
    let worker = Arc::new(Worker {
        sandbox: Arc::new(sandbox),
        images: Images::Store(store),
        settings,
        bundle_cache: cache.clone(),
    });

    let mut cfg = ConsumerConfig::new(broker);
    cfg.tls_ca_file = args.broker_ca_file.clone();
    cfg.slots = args.slots.max(1);
    // Which process a connection belongs to, as RabbitMQ's tools show it.
    cfg.connection_name = format!("{}:{}", cfg.connection_name, std::process::id());
    if let Some(q) = &args.queue {
        cfg.queue = q.clone();
    }
    cfg.exit = args.exit.policy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(addr) = args.metrics_addr {
        rt.block_on(crate::metrics::serve(addr, metrics))?;
    }
    rt.block_on(async move {
        let consumer = Arc::new(Consumer::new(cfg));
        let shutdown = CancellationToken::new();
        let kill_all = CancellationToken::new();
        tokio::spawn(signals(
            shutdown.clone(),
            kill_all.clone(),
            args.drain_timeout,
        ));
        let handler = {
            let (worker, kill_all) = (worker.clone(), kill_all.clone());
            move |job: Job| {
                let (worker, kill_all, rewrite, cache) = (
                    worker.clone(),
                    kill_all.clone(),
                    rewrite.clone(),
                    cache.clone(),
                );
                async move { handle(&worker, job, kill_all, rewrite, cache, silent).await }
            }
        };
        tracing::info!(slots = args.slots, "compute-worker is consuming");
        if let Some(why) = consumer.run(Arc::new(handler), shutdown).await {
            tracing::info!(reason = %why, "compute-worker exits (autoscaling)");
        }
    });
    Ok(0)
}

/// SIGTERM/SIGINT: stop taking jobs and let running ones finish for up to
/// `drain`; a second signal, or the end of `drain`, kills the running
/// sandboxes and gives their tasks back to the broker.
async fn signals(shutdown: CancellationToken, kill_all: CancellationToken, drain: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        drain_secs = drain.as_secs(),
        "stopping: no new jobs; running jobs may finish (signal again to kill them now)"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep(drain) => {}
    }
    tracing::warn!("killing the running jobs; their tasks go back to the broker");
    kill_all.cancel();
}

async fn handle(
    worker: &Worker,
    job: Job,
    kill_all: CancellationToken,
    rewrite: Option<UrlRewrite>,
    cache: Option<Arc<BundleCache>>,
    silent: bool,
) -> Disposition {
    use tracing::Instrument;
    let args = &job.message.run_args;
    let span = tracing::info_span!("job", task = %job.message.task_id, submission = args.id, scoring = args.is_scoring);
    handle_in_span(worker, &job, kill_all, rewrite, cache, silent)
        .instrument(span)
        .await
}

async fn handle_in_span(
    worker: &Worker,
    job: &Job,
    kill_all: CancellationToken,
    rewrite: Option<UrlRewrite>,
    cache: Option<Arc<BundleCache>>,
    silent: bool,
) -> Disposition {
    let args = &job.message.run_args;
    let client = match SiteClient::new(
        &args.submissions_api_url,
        args.id,
        args.user_pk,
        &args.secret,
    ) {
        Ok(c) => c.with_rewrite(rewrite),
        Err(e) => {
            tracing::error!(error = %e, "cannot talk to the site named in the task; dropping it");
            return Disposition::Ack;
        }
    };
    let cancel = CancellationToken::new();
    let watch = {
        let (c, revoke) = (cancel.clone(), job.cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = revoke.cancelled() => {}
                _ = kill_all.cancelled() => {}
            }
            c.cancel();
        })
    };
    let reporter = SiteReporter::new(client, worker.settings.bounds.unzip(), cache);
    let step = match step_from(args) {
        Ok(step) => step,
        Err(msg) => {
            lifecycle::refuse(worker, &reporter, args.is_scoring, msg).await;
            reporter.finish().await;
            watch.abort();
            return Disposition::Ack;
        }
    };
    let report = if silent {
        let silent = Silent::new(&reporter, &step.uploads);
        lifecycle::run_step(worker, &silent, &step, &cancel, job.deadline, job.received).await
    } else {
        lifecycle::run_step(
            worker,
            &reporter,
            &step,
            &cancel,
            job.deadline,
            job.received,
        )
        .await
    };
    reporter.finish().await;
    watch.abort();
    log_job_done(&report, job.received.elapsed());
    // Killed by the worker's own shutdown, not by the site: another worker
    // (or this one, restarted) must run it.
    if report.ending == Ending::Cancelled && !job.cancel.is_cancelled() {
        Disposition::Requeue
    } else {
        Disposition::Ack
    }
}

/// The step's one JSON-friendly line: how it ended, each stage's seconds
/// (they add up to `total_s`, from the task's receipt), the image's source
/// and bytes fetched, each program's resources (a JSON array), and the
/// time from receipt to this line (`elapsed_s`).
fn log_job_done(report: &lifecycle::StepReport, elapsed: Duration) {
    use crate::job::timings::Stage;
    let t = &report.timings;
    let secs = |s: Stage| t.of(s).as_secs_f64();
    let (image_source, image_bytes) = t.image.map_or(("none", 0), |(s, b)| (s.as_str(), b));
    let resources = serde_json::to_string(&report.resources).unwrap_or_default();
    tracing::info!(
        ending = ?report.ending,
        received_s = secs(Stage::Received),
        bundles_downloaded_s = secs(Stage::BundlesDownloaded),
        image_ready_s = secs(Stage::ImageReady),
        image_source,
        image_bytes,
        sandbox_up_s = secs(Stage::SandboxUp),
        program_done_s = secs(Stage::ProgramDone),
        outputs_uploaded_s = secs(Stage::OutputsUploaded),
        final_status_s = secs(Stage::FinalStatus),
        cleanup_s = secs(Stage::Cleanup),
        total_s = t.total().as_secs_f64(),
        elapsed_s = elapsed.as_secs_f64(),
        %resources,
        "job done"
    );
}
