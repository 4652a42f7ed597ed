//! `compute-worker serve`: the drop-in for Codabench's compute worker.
//! Consumes `compute_worker_run` tasks and runs each job step against the
//! site, with the environment variables of Codabench's `.env`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::broker::url::{use_ssl_from_env, BrokerUrl};
use crate::broker::{Consumer, ConsumerConfig, Job};
use crate::cli::ServeArgs;
use crate::job::bundle::UnzipLimits;
use crate::job::lifecycle::{self, Images, Settings, Worker};
use crate::job::remote::{step_from, SiteReporter};
use crate::sandbox::Limits;
use crate::site::{SiteClient, UrlRewrite};

/// A Codabench-style truthy value: `true`, case-insensitive (as HEAD reads
/// `USE_GPU` and `COMPETITION_CONTAINER_NETWORK_DISABLED`).
fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Any non-empty value (as Codabench reads `CODALAB_IGNORE_CLEANUP_STEP`).
fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Codabench's `HOST_DIRECTORY` (job directories, `data/`), defaulting to
/// `$XDG_DATA_HOME/compute-worker/codabench`.
fn host_directory() -> PathBuf {
    match std::env::var_os("HOST_DIRECTORY").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::images::default_image_dir()
            .parent()
            .map(|p| p.join("codabench"))
            .unwrap_or_else(|| PathBuf::from("/tmp/codabench")),
    }
}

pub fn run(args: ServeArgs) -> Result<i32> {
    for ignored in ["CONTAINER_ENGINE_EXECUTABLE", "CONTAINER_SOCKET"] {
        if env_set(ignored) {
            tracing::info!("{ignored} is set but not needed: this worker runs sandboxes itself, with no container engine");
        }
    }
    if env_true("USE_GPU") {
        tracing::warn!("USE_GPU=true: GPU injection is not implemented yet; jobs run on CPU");
    }
    let raw_url = std::env::var("BROKER_URL")
        .context("BROKER_URL is not set: give it in the environment or in .env (pyamqp://user:pass@host:5672/vhost)")?;
    let use_ssl = use_ssl_from_env(std::env::var("BROKER_USE_SSL").ok().as_deref());
    let broker = BrokerUrl::parse(&raw_url, use_ssl, args.verify_broker_tls)
        .with_context(|| "BROKER_URL is not a valid broker URL".to_string())?;

    let limits = Limits {
        memory: args.memory,
        pids: args.pids,
        cpus: args.cpus.clone(),
    };
    let sandbox = crate::exec::sandbox_config(&args.sandbox, !limits.is_empty())?;
    let store = crate::images::open_store(&args.images, &sandbox)?;
    let host_dir = host_directory();
    let settings = Settings {
        work_dir: host_dir.clone(),
        data_dir: Some(host_dir.join("data")),
        network: !env_true("COMPETITION_CONTAINER_NETWORK_DISABLED"),
        http_proxy: env_or("COMPETITION_CONTAINER_HTTP_PROXY", ""),
        https_proxy: env_or("COMPETITION_CONTAINER_HTTPS_PROXY", ""),
        keep_job_dir: env_set("CODALAB_IGNORE_CLEANUP_STEP"),
        limits,
        ..Settings::default()
    };
    let rewrite = std::env::var("WORKER_BUNDLE_URL_REWRITE")
        .ok()
        .and_then(|v| UrlRewrite::parse(&v));
    let worker = Arc::new(Worker {
        sandbox: Arc::new(sandbox),
        images: Images::Store(store),
        settings,
    });

    let mut cfg = ConsumerConfig::new(broker);
    cfg.slots = args.slots.max(1);
    if let Some(q) = &args.queue {
        cfg.queue = q.clone();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let consumer = Arc::new(Consumer::new(cfg));
        let shutdown = CancellationToken::new();
        let kill_all = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone(), kill_all.clone()));
        let handler = {
            let (worker, kill_all) = (worker.clone(), kill_all.clone());
            move |job: Job| {
                let (worker, kill_all, rewrite) =
                    (worker.clone(), kill_all.clone(), rewrite.clone());
                async move { handle(&worker, job, kill_all, rewrite).await }
            }
        };
        tracing::info!(slots = args.slots, "compute-worker is consuming");
        consumer.run(Arc::new(handler), shutdown).await;
    });
    Ok(0)
}

/// SIGTERM/SIGINT: stop taking jobs and let running ones finish; a second
/// one kills the running sandboxes.
async fn signals(shutdown: CancellationToken, kill_all: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            tracing::info!(
                "stopping: no new jobs; running jobs finish (signal again to kill them)"
            );
            shutdown.cancel();
        } else {
            tracing::warn!("killing the running jobs");
            kill_all.cancel();
        }
    }
}

async fn handle(
    worker: &Worker,
    job: Job,
    kill_all: CancellationToken,
    rewrite: Option<UrlRewrite>,
) {
    use tracing::Instrument;
    let args = &job.message.run_args;
    let span = tracing::info_span!("job", task = %job.message.task_id, submission = args.id, scoring = args.is_scoring);
    handle_in_span(worker, &job, kill_all, rewrite)
        .instrument(span)
        .await
}

async fn handle_in_span(
    worker: &Worker,
    job: &Job,
    kill_all: CancellationToken,
    rewrite: Option<UrlRewrite>,
) {
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
            return;
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
    let reporter = SiteReporter::new(client, UnzipLimits::default(), None);
    let step = step_from(args);
    // Boxed with an explicit `Send`: the compiler cannot prove it through the
    // generic reporter on its own (a known limitation of async trait methods).
    let step_run: std::pin::Pin<
        Box<dyn std::future::Future<Output = lifecycle::StepReport> + Send + '_>,
    > = Box::pin(lifecycle::run_step(
        worker,
        &reporter,
        &step,
        &cancel,
        job.deadline,
    ));
    let report = step_run.await;
    reporter.finish().await;
    watch.abort();
    tracing::info!(ending = ?report.ending, "job done");
}
