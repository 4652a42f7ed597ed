//! `compute-worker serve`: the drop-in for Codabench's compute worker.
//! Consumes `compute_worker_run` tasks and runs each job step against the
//! site, with the environment variables of Codabench's `.env`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::broker::{Consumer, ConsumerConfig, Disposition, Job};
use crate::cli::ServeArgs;
use crate::config::codabench::Codabench;
use crate::job::bundle::UnzipLimits;
use crate::job::bundle_cache::BundleCache;
use crate::job::lifecycle::{self, Ending, Images, Settings, Worker};
use crate::job::remote::{step_from, SiteReporter};
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
    let sandbox =
        crate::exec::sandbox_config(&args.sandbox, Some(&wanted), crate::exec::Starts::Many)?;
    if let Some(d) = &sandbox.cgroup {
        // Refuse at start what every job would fail on.
        d.check_limits(&wanted)
            .map_err(|why| anyhow::anyhow!("the limits cannot be enforced: {why}"))?;
    }
    let store = crate::images::open_store(&args.images, &sandbox)?;
    let slots = crate::job::worker_slots::SlotPlan::new(crate::job::worker_slots::PlanInput {
        slots: args.slots,
        use_gpu: codabench.use_gpu,
        gpu_device: codabench.gpu_device.as_deref(),
        gpus_per_slot: args.gpus_per_slot,
        slot_cpus: &args.slot_cpus,
        gpu_root: &args.gpu_root.gpu_root,
    })?;
    let host_dir = codabench.host_directory.clone();
    let metrics = crate::metrics::Metrics::new();
    metrics.set_slots(args.slots.max(1));
    metrics.watch_image_store(store.clone());
    let settings = Settings {
        work_dir: host_dir.clone(),
        data_dir: Some(host_dir.join("data")),
        network: !codabench.network_disabled,
        http_proxy: codabench.http_proxy.clone(),
        https_proxy: codabench.https_proxy.clone(),
        keep_job_dir: codabench.keep_job_dirs,
        limits,
        slots,
        metrics: metrics.clone(),
        ..Settings::default()
    };
    let rewrite = codabench.bundle_url_rewrite.clone();
    // The dataset cache (input_data, reference_data), as Codabench's
    // /codabench/cache, bounded by MAX_CACHE_DIR_SIZE_GB.
    let cache = match BundleCache::new(host_dir.join("cache"), codabench.max_cache_bytes) {
        Ok(c) => {
            let c = Arc::new(c);
            metrics.watch_bundle_cache(c.clone());
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
    });

    let mut cfg = ConsumerConfig::new(broker);
    cfg.tls_ca_file = args.broker_ca_file.clone();
    cfg.slots = args.slots.max(1);
    // Which process a connection belongs to, as RabbitMQ's tools show it.
    cfg.connection_name = format!("{}:{}", cfg.connection_name, std::process::id());
    if let Some(q) = &args.queue {
        cfg.queue = q.clone();
    }
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
                async move { handle(&worker, job, kill_all, rewrite, cache).await }
            }
        };
        tracing::info!(slots = args.slots, "compute-worker is consuming");
        consumer.run(Arc::new(handler), shutdown).await;
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
) -> Disposition {
    use tracing::Instrument;
    let args = &job.message.run_args;
    let span = tracing::info_span!("job", task = %job.message.task_id, submission = args.id, scoring = args.is_scoring);
    handle_in_span(worker, &job, kill_all, rewrite, cache)
        .instrument(span)
        .await
}

async fn handle_in_span(
    worker: &Worker,
    job: &Job,
    kill_all: CancellationToken,
    rewrite: Option<UrlRewrite>,
    cache: Option<Arc<BundleCache>>,
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
    let reporter = SiteReporter::new(client, UnzipLimits::default(), cache);
    let step = step_from(args);
    let report = lifecycle::run_step(worker, &reporter, &step, &cancel, job.deadline).await;
    reporter.finish().await;
    watch.abort();
    tracing::info!(ending = ?report.ending, "job done");
    // Killed by the worker's own shutdown, not by the site: another worker
    // (or this one, restarted) must run it.
    if report.ending == Ending::Cancelled && !job.cancel.is_cancelled() {
        Disposition::Requeue
    } else {
        Disposition::Ack
    }
}
