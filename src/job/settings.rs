//! Worker-wide settings of job steps, and what all steps share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::image::Images;
use crate::metrics::Metrics;
use crate::sandbox::{Limits, Network, SandboxConfig};

/// Worker-wide settings of job steps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Job root directories are created here.
    pub work_dir: PathBuf,
    /// Organiser data mounted read-only at `/app/data`, when it exists.
    pub data_dir: Option<PathBuf>,
    /// `false` when `COMPETITION_CONTAINER_NETWORK_DISABLED` is true.
    pub network: bool,
    /// The network programs get when `network` is true
    /// (`COMPUTE_WORKER_NETWORK`): never the host's unless asked for.
    pub network_mode: Network,
    pub http_proxy: String,
    pub https_proxy: String,
    /// `COMPUTE_WORKER_NO_CLEANUP` (or `CODALAB_IGNORE_CLEANUP_STEP`): keep job directories.
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
    /// Caps on parsed files and bundles.
    pub bounds: super::bounds::JobBounds,
    /// `HUMAN_IN_THE_LOOP` and where operators' decisions are read.
    pub hitl: super::hitl::Hitl,
    /// `COMPETITION_ALLOW_IMAGE_PULL`: false uses cached images only.
    pub allow_image_pull: bool,
    /// Pause between pull attempts after a transient failure.
    pub pull_retry_delay: Duration,
    /// `COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD`: v1.27 tasks keep the
    /// prediction on this host, where the scoring step takes it from.
    pub keep_predictions_here: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            work_dir: std::env::temp_dir().join("compute-worker-jobs"),
            data_dir: None,
            network: true,
            network_mode: Network::Pasta,
            http_proxy: String::new(),
            https_proxy: String::new(),
            keep_job_dir: false,
            hostname: crate::hostname::hostname(),
            limits: Limits::default(),
            log_cap: 50 << 20,
            detailed_results_interval: Duration::from_secs(5),
            slots: None,
            metrics: Metrics::default(),
            bounds: Default::default(),
            hitl: Default::default(),
            allow_image_pull: true,
            pull_retry_delay: super::image::PULL_RETRY_DELAY,
            keep_predictions_here: false,
        }
    }
}

/// Everything steps share.
pub struct Worker {
    pub sandbox: Arc<SandboxConfig>,
    pub images: Images,
    pub settings: Settings,
    /// The dataset cache, evicted from when the disk is full.
    pub bundle_cache: Option<Arc<super::bundle_cache::BundleCache>>,
}
