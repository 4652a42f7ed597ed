//! The worker's Prometheus metrics, and the opt-in `/metrics` endpoint of
//! `serve --metrics-addr`.
//!
//! One [`Metrics`] handle (a cheap clone) travels in the job layer's
//! settings; the job steps record job
//! endings, phase times, image cache hits and busy slots through it. Cache
//! sizes are read from disk at scrape time, so they also see what
//! `compute-worker prune` or another process changed.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

mod resources;
use resources::ResourceMetrics;
pub use resources::RunUsage;

/// The parts of a job step whose duration is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching the bundles (submission, programs, data).
    Download,
    /// Getting the image: a cache lookup, or a pull.
    Pull,
    /// The programs, from the start of the first to the end of the last.
    Run,
    /// The logs, the detailed results and the result zip, to the site.
    Upload,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Pull => "pull",
            Phase::Run => "run",
            Phase::Upload => "upload",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    /// `prediction` or `scoring`.
    step: &'static str,
    /// `finished` (a prediction step: `Scoring` reported), `failed` or
    /// `cancelled`.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// 0.1 s to about 7 hours, ×4 per bucket.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 4.0, 10))
}

struct Inner {
    registry: Mutex<Registry>,
    jobs: Family<JobLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    image_hits: Counter,
    image_misses: Counter,
    slots: Gauge,
    slots_busy: Gauge,
    resources: ResourceMetrics,
}

/// A handle on the worker's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("compute_worker");
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs",
            "Job steps ended, by step (prediction, scoring) and outcome (finished, failed, cancelled)",
            jobs.clone(),
        );
        let phases = Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            phase_histogram,
        );
        registry.register_with_unit(
            "phase",
            "Time spent per job phase: download (bundles), pull (image), run (programs), upload (results and logs)",
            Unit::Seconds,
            phases.clone(),
        );
        let image_hits = Counter::default();
        registry.register(
            "image_cache_hits",
            "Job images found in the image cache",
            image_hits.clone(),
        );
        let image_misses = Counter::default();
        registry.register(
            "image_cache_misses",
            "Job images that had to be pulled",
            image_misses.clone(),
        );
        let slots = Gauge::default();
        registry.register(
            "slots",
            "Jobs this worker runs at the same time",
            slots.clone(),
        );
        let slots_busy = Gauge::default();
        registry.register("slots_busy", "Slots running a job now", slots_busy.clone());
        let resources = ResourceMetrics::register(&mut registry);
        Metrics(Arc::new(Inner {
            registry: Mutex::new(registry),
            jobs,
            phases,
            image_hits,
            image_misses,
            slots,
            slots_busy,
            resources,
        }))
    }

    /// A step ended this way.
    pub fn job_ended(&self, is_scoring: bool, outcome: JobOutcome) {
        let step = if is_scoring { "scoring" } else { "prediction" };
        let outcome = match outcome {
            JobOutcome::Finished => "finished",
            JobOutcome::Failed => "failed",
            JobOutcome::Cancelled => "cancelled",
        };
        self.0
            .jobs
            .get_or_create(&JobLabels { step, outcome })
            .inc();
    }

    /// `phase` of a step took `took`.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.0
            .phases
            .get_or_create(&PhaseLabels {
                phase: phase.label(),
            })
            .observe(took.as_secs_f64());
    }

    /// What one program run used.
    pub fn run_usage(&self, usage: &RunUsage) {
        self.0.resources.run(usage);
    }

    /// Job stage `stage` (a label, e.g. `image_ready`) took `took`.
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.0.resources.stage(stage, took.as_secs_f64());
    }

    /// A job image was found in the cache (`true`) or pulled.
    pub fn image_lookup(&self, hit: bool) {
        if hit {
            self.0.image_hits.inc();
        } else {
            self.0.image_misses.inc();
        }
    }

    /// Times `phase` until the returned clock is dropped.
    pub fn phase_clock(&self, phase: Phase) -> PhaseClock {
        PhaseClock {
            metrics: self.clone(),
            phase,
            started: Instant::now(),
        }
    }

    pub fn set_slots(&self, slots: usize) {
        self.0.slots.set(slots as i64);
    }

    /// Counts one busy slot until the guard is dropped.
    pub fn busy_slot(&self) -> BusySlot {
        self.0.slots_busy.inc();
        BusySlot(self.0.slots_busy.clone())
    }

    /// Report the image cache's size on each scrape.
    pub fn watch_image_store(&self, store: rootfs_cache::Store) {
        self.register_size(
            "image_cache_bytes",
            "Bytes held by the image cache (unpacked layers and kept blobs).",
            Box::new(move || store.total_bytes().ok()),
        );
    }

    /// Report a size (a cache's bytes) on each scrape, as `name`.
    pub fn watch_size(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) {
        self.register_size(name, help, Box::new(read));
    }

    fn register_size(&self, name: &'static str, help: &'static str, read: SizeReader) {
        let collector = SizeCollector { name, help, read };
        self.registry().register_collector(Box::new(collector));
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry());
        text
    }
}

/// How a job step ended, as the `outcome` label counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Finished,
    Failed,
    Cancelled,
}

/// See [`Metrics::phase_clock`]: records on drop, whichever way the phase
/// ended.
pub struct PhaseClock {
    metrics: Metrics,
    phase: Phase,
    started: Instant,
}

impl Drop for PhaseClock {
    fn drop(&mut self) {
        self.metrics.phase(self.phase, self.started.elapsed());
    }
}

/// One busy slot; see [`Metrics::busy_slot`].
pub struct BusySlot(Gauge);

impl Drop for BusySlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type SizeReader = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// A gauge read from disk when scraped; absent when it cannot be read.
struct SizeCollector {
    /// Without the `compute_worker_` prefix, which the registry adds.
    name: &'static str,
    help: &'static str,
    read: SizeReader,
}

impl fmt::Debug for SizeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for SizeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(bytes) = (self.read)() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(bytes as i64);
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve `GET /metrics` on `addr` from the current tokio runtime. Fails at
/// once when the address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<()> {
    use anyhow::Context;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("--metrics-addr {addr}: cannot listen there (address in use, or not this host's?)")
    })?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                // Cache sizes are read from disk: not on the async threads.
                let text = tokio::task::spawn_blocking(move || metrics.encode())
                    .await
                    .unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text)
            }
        }),
    );
    tracing::info!("metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
