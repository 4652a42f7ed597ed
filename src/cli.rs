//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::template::parse_path;
use crate::host;
use crate::sandbox::{Bind, Network};
use crate::units::{parse_bytes, parse_bytes_or_zero, parse_duration, parse_user};

#[derive(Debug, Parser)]
#[command(
    name = "compute-worker",
    version,
    about = "Codabench compute worker with rootless sandboxes and no container engine"
)]
pub struct Cli {
    /// A TOML config file (default: $XDG_CONFIG_HOME/compute-worker/config.toml,
    /// else /etc/compute-worker/config.toml; also COMPUTE_WORKER_CONFIG).
    /// The .env file, the environment and flags win over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A .env file with Codabench's variable names (default: ./.env if it
    /// exists); the environment wins over it.
    #[arg(long, global = true)]
    pub env_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "COMPUTE_WORKER_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run one command in a rootless sandbox and exit with its exit code.
    Exec(Box<ExecArgs>),
    /// Consume Codabench `compute_worker_run` tasks (the drop-in worker).
    Serve(Box<ServeArgs>),
    /// Run one submission locally through both steps (no broker, no site);
    /// with no bundles, the embedded demo competition, offline.
    Run(Box<LocalRunArgs>),
    /// Pull an image from a registry into the image cache.
    Pull(PullArgs),
    /// List the cached images.
    Images(ImagesArgs),
    /// Evict least recently used images (never one a running job uses).
    Prune(PruneArgs),
    /// Import an OCI layout (directory or tarball) or a `docker save` archive.
    Import(ImportArgs),
    /// Print the effective configuration (`serve`'s options, Codabench's
    /// variables), each value with where it came from; secrets redacted.
    Config(Box<ConfigArgs>),
    /// Check that this host can run the worker: one row per check, with a fix for each failure.
    Doctor(Box<DoctorArgs>),
    /// Set the host up for the worker's user (as root, once): subordinate
    /// ids, cgroup delegation, linger, cache directories.
    SetupHost(Box<SetupHostArgs>),
    /// Write a systemd user unit that runs `serve`, and start it.
    InstallService(InstallServiceArgs),
    /// Human in the loop: list the scoring jobs a running `serve` holds for
    /// validation, approve or reject one (as the worker's user).
    Hitl(HitlArgs),
    /// Measure the sandbox against other runtimes (as an ordinary user).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Start-to-exit of a trivial program in compute-worker's sandbox and
    /// in every runtime on $PATH (runc, crun, youki, podman), interleaved.
    Startup(BenchStartupArgs),
}

#[derive(Debug, Args)]
pub struct BenchStartupArgs {
    /// Rounds; each starts every runtime, in a random order.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Starts of one runtime at once in each round (throughput).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Only these runtimes (comma-separated): floor, compute-worker, runc,
    /// crun, youki, podman.
    #[arg(long, value_delimiter = ',')]
    pub runtimes: Vec<String>,
    /// Extra compute-worker starts that record where the time goes (0: none).
    #[arg(long, default_value_t = 20)]
    pub phase_runs: usize,
    /// Write the results as JSON to FILE (`-`: standard output, instead of
    /// the table).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw one distribution per runtime to FILE (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Where the benchmark's files go while it runs (default: the temp
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HitlArgs {
    #[command(subcommand)]
    pub action: HitlAction,
}

#[derive(Debug, Subcommand)]
pub enum HitlAction {
    /// The jobs awaiting validation, with their scores and output folders.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish the scores and results of submission ID.
    Approve { id: u64 },
    /// Fail submission ID; nothing of its results is published.
    Reject { id: u64 },
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Jobs run at the same time, each on its own channel (prefetch 1).
    #[arg(long, default_value_t = 1, env = "COMPUTE_WORKER_SLOTS")]
    pub slots: usize,
    /// Queue name (Codabench's is `compute-worker`).
    #[arg(long, env = "COMPUTE_WORKER_QUEUE")]
    pub queue: Option<String>,
    /// On SIGTERM, how long running jobs may finish before they are killed
    /// and their tasks given back to the broker (a second signal: at once).
    #[arg(long, value_parser = parse_duration, default_value = "5m", env = "COMPUTE_WORKER_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
    /// Verify the broker's TLS certificate (Codabench's worker does not).
    #[arg(long, env = "COMPUTE_WORKER_VERIFY_BROKER_TLS")]
    pub verify_broker_tls: bool,
    /// PEM file of the CA that signed the broker's certificate (a private
    /// CA): the certificate is verified against it instead of the system's
    /// roots (implies --verify-broker-tls).
    #[arg(long, env = "COMPUTE_WORKER_BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default).
    #[arg(long, value_name = "ADDR:PORT", env = "COMPUTE_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub bounds: JobBoundArgs,
    #[command(flatten)]
    pub pull_retry: PullRetryArg,
    /// With USE_GPU=true: give each slot its own K GPUs (by UUID) out of
    /// GPU_DEVICE's; 0 (default): every slot gets all of them.
    #[arg(long, default_value_t = 0, env = "COMPUTE_WORKER_GPUS_PER_SLOT")]
    pub gpus_per_slot: usize,
    /// A cpuset per slot, in slot order (repeatable: `--slot-cpus 0-7 --slot-cpus 8-15`).
    #[arg(long = "slot-cpus", value_name = "CPUSET")]
    pub slot_cpus: Vec<String>,
    #[command(flatten)]
    pub gpu_root: GpuRootArg,
    #[command(flatten)]
    pub network: NetworkArg,
    #[command(flatten)]
    pub exit: ExitArgs,
}

/// When `serve` exits on its own, for autoscaling: it finishes the jobs it
/// holds, gives back any task it received but did not start, and exits 0.
#[derive(Debug, Args)]
pub struct ExitArgs {
    /// Exit once no job has run and none was received for DURATION
    /// (`10m`): a spot instance or batch job scaling to zero.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          env = "COMPUTE_WORKER_EXIT_WHEN_IDLE")]
    pub exit_when_idle: Option<Duration>,
    /// Exit after taking N jobs (each step of a submission is one job).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..),
          env = "COMPUTE_WORKER_EXIT_AFTER")]
    pub exit_after: Option<u64>,
}

impl ExitArgs {
    pub fn policy(&self) -> crate::broker::ExitPolicy {
        crate::broker::ExitPolicy {
            after_jobs: self.exit_after,
            when_idle: self.exit_when_idle,
        }
    }
}

/// The network of `serve`'s and `run`'s programs, when the competition
/// allows network (COMPETITION_CONTAINER_NETWORK_DISABLED unset).
#[derive(Debug, Args)]
pub struct NetworkArg {
    /// Programs' network: pasta (a namespace of their own, no way to this host's loopback), none, or host (this host's namespace: on purpose only).
    #[arg(long, default_value = "pasta", env = "COMPUTE_WORKER_NETWORK")]
    pub network: Network,
}

/// How a job's image pull is retried.
#[derive(Debug, Args)]
pub struct PullRetryArg {
    /// Pause between the attempts of a pull that failed transiently
    /// (refused connection, timeout, HTTP 5xx/429): 3 retries.
    #[arg(long, value_parser = parse_duration, default_value = "5s",
          env = "COMPUTE_WORKER_PULL_RETRY_DELAY")]
    pub pull_retry_delay: Duration,
}

/// Where GPU discovery looks for the driver (device nodes, ld.so.cache,
/// /proc/driver/nvidia, CDI specs): `/` except in tests or on hosts that
/// keep the driver under another root.
#[derive(Debug, Args)]
pub struct GpuRootArg {
    #[arg(
        long,
        hide = true,
        default_value = "/",
        env = "COMPUTE_WORKER_GPU_ROOT"
    )]
    pub gpu_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct LocalRunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Competition image (pulled into the cache if missing).
    #[arg(long, conflicts_with = "rootfs")]
    pub image: Option<String>,
    /// A root filesystem directory to use instead of an image.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The submission: a directory or a zip (code, or results).
    #[arg(long)]
    pub submission: Option<PathBuf>,
    #[arg(long)]
    pub ingestion_program: Option<PathBuf>,
    #[arg(long)]
    pub input_data: Option<PathBuf>,
    #[arg(long)]
    pub reference_data: Option<PathBuf>,
    #[arg(long)]
    pub scoring_program: Option<PathBuf>,
    /// Run the ingestion program in the scoring step instead.
    #[arg(long)]
    pub ingestion_only_during_scoring: bool,
    /// Run the steps as this Codabench's worker does: 1.27 (and later:
    /// the submission never runs, it is read-only at /app/ingested_program
    /// in every program and copied into input/res for scoring) or 1.26
    /// (and earlier: a submission with a command in its metadata runs
    /// beside the ingestion program).
    #[arg(long, default_value = "1.26", value_parser = ["1.26", "1.27"])]
    pub codabench: String,
    /// Organiser data mounted read-only at /app/data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Execution time limit of each step in seconds (0: none).
    #[arg(long, default_value_t = 600)]
    pub time_limit: u64,
    /// Where the results, logs and scores go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    #[command(flatten)]
    pub network: NetworkArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub bounds: JobBoundArgs,
    #[command(flatten)]
    pub pull_retry: PullRetryArg,
    /// Keep each step's job directory (as CODALAB_IGNORE_CLEANUP_STEP).
    #[arg(long)]
    pub keep_job_dirs: bool,
    /// GPUs for both programs: all, an index, GPU-<uuid>, nvidia.com/gpu=NAME
    /// (comma-separated), as `exec --gpus` and Codabench's GPU_DEVICE.
    #[arg(long, value_name = "SPEC")]
    pub gpus: Option<String>,
    #[command(flatten)]
    pub gpu_root: GpuRootArg,
}

/// Where images are cached.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Image cache directory (default: $XDG_DATA_HOME/compute-worker/images).
    #[arg(long, env = "COMPUTE_WORKER_IMAGE_DIR", value_parser = parse_path)]
    pub image_dir: Option<PathBuf>,
    /// Size bound of the image cache, e.g. 50g (default 20 GiB).
    #[arg(long, env = "COMPUTE_WORKER_IMAGE_CACHE_MAX", value_parser = parse_bytes)]
    pub image_cache_max: Option<u64>,
    /// Bound on the file bytes one image may unpack to, checked while it
    /// unpacks, e.g. 30g (default 20 GiB, never above the cache bound).
    #[arg(long, env = "COMPUTE_WORKER_IMAGE_MAX_BYTES", value_parser = parse_bytes)]
    pub image_max_bytes: Option<u64>,
    /// Bound on the files, directories and links one image may unpack to
    /// (default 1000000).
    #[arg(long, env = "COMPUTE_WORKER_IMAGE_MAX_ENTRIES")]
    pub image_max_entries: Option<u64>,
    /// Cap on an image to pull: the sum of its compressed layer sizes in
    /// its manifest, checked before any blob is fetched, e.g. 8g (default: none).
    #[arg(long, env = "COMPUTE_WORKER_MAX_IMAGE_SIZE", value_parser = parse_bytes)]
    pub max_image_size: Option<u64>,
    /// Shared image stores, only read (never written, locked or pruned),
    /// consulted before pulling; their layers are used in place
    /// (`:`-separated in the variable; repeat the flag).
    #[arg(
        long = "additional-image-store",
        env = "COMPUTE_WORKER_ADDITIONAL_IMAGE_STORES",
        value_name = "PATH",
        value_delimiter = ':',
        value_parser = parse_path
    )]
    pub additional_image_stores: Vec<PathBuf>,
}

impl ImageArgs {
    pub fn store_settings(&self) -> host::StoreSettings {
        host::StoreSettings {
            dir: self.image_dir.clone(),
            cache_max: self.image_cache_max,
            image_max_bytes: self.image_max_bytes,
            image_max_entries: self.image_max_entries,
            max_image_size: self.max_image_size,
            additional: self.additional_image_stores.clone(),
            record_tree_digests: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Image reference, e.g. busybox, python:3.12, registry:5000/team/img@sha256:...
    pub image: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `--store DIR` of `pull` and `import`.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// Fill the shared image store DIR (read by workers through
    /// additional_image_stores) instead of this worker's own: each layer's
    /// tree digest is recorded, and nothing is evicted from it.
    #[arg(long = "store", value_name = "DIR", value_parser = parse_path)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Evict until the cache holds at most this much (default: the cache bound).
    #[arg(long, value_parser = parse_bytes, conflicts_with = "all")]
    pub keep: Option<u64>,
    /// Evict every image not in use.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// OCI layout directory or tarball, or `docker save` archive.
    pub path: PathBuf,
    /// Name to give the image when the archive names none.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Resource limits of each program (memory and cpus through a delegated
/// cgroup).
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Memory limit, e.g. 512m, 2g (needs a delegated cgroup).
    #[arg(long, value_parser = parse_bytes, env = "COMPUTE_WORKER_MEMORY")]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads of each program (0: no
    /// limit): the cgroup pids controller, else RLIMIT_NPROC.
    #[arg(long, env = "COMPUTE_WORKER_PIDS", default_value_t = DEFAULT_PIDS)]
    pub pids: i64,
    /// cpuset, e.g. 0-1 or 0,2 (needs a delegated cgroup).
    #[arg(long, env = "COMPUTE_WORKER_CPUS")]
    pub cpus: Option<String>,
    /// Bytes each program may add to the disk, in its image layer and the
    /// job directories it can write, e.g. 20g (0: no limit); past it the
    /// program is killed and the job fails.
    #[arg(long, value_parser = parse_bytes_or_zero, env = crate::job::bounds::WRITE_MAX, default_value = "20g")]
    pub write_max: u64,
}

/// Default of `--pids`: a fork bomb stops at its run.
pub const DEFAULT_PIDS: i64 = 4096;

impl LimitArgs {
    pub fn limits(&self) -> crate::sandbox::Limits {
        crate::sandbox::Limits {
            memory: self.memory,
            pids: Some(self.pids).filter(|p| *p > 0),
            cpus: self.cpus.clone(),
            write_max: Some(self.write_max).filter(|c| *c > 0),
        }
    }
}

/// Host-side settings every sandbox shares.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Where run directories (overlay upper layers, bundles) live.
    #[arg(long, env = "COMPUTE_WORKER_STATE_DIR", value_parser = parse_path)]
    pub state_dir: Option<PathBuf>,
    /// A cgroup subtree delegated to this user, as a path inside the cgroup
    /// hierarchy (e.g. /compute-worker); on cgroup v2 the worker must run
    /// inside it. Unset on cgroup v2: the worker's own cgroup when systemd
    /// delegated it (Delegate=yes). Without either, limits are off.
    #[arg(long, env = "COMPUTE_WORKER_CGROUP_PARENT", value_parser = parse_path)]
    pub cgroup_parent: Option<PathBuf>,
    /// Which ids sandboxes map: auto (subordinate ids when this user has
    /// /etc/subuid and /etc/subgid ranges, else single), subids, or single
    /// (only this user's uid and gid, as 0: image owners are ignored and
    /// processes inside cannot be separated by uid).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "COMPUTE_WORKER_ID_MODE"
    )]
    pub id_mode: crate::sandbox::IdModeSetting,
}

impl SandboxArgs {
    /// The sandbox configuration these options give (see
    /// [`host::sandbox_config`]).
    pub fn config(
        &self,
        limits: Option<&crate::sandbox::Limits>,
        starts: host::Starts,
    ) -> anyhow::Result<crate::sandbox::SandboxConfig> {
        host::sandbox_config(
            self.state_dir.clone(),
            self.cgroup_parent.as_deref(),
            self.id_mode,
            limits,
            starts,
        )
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Root filesystem directory (never modified: writes go to a per-run layer).
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Run on a cached image (pulled first if missing); its Env, WorkingDir,
    /// User, Entrypoint and Cmd apply unless overridden.
    #[arg(long)]
    pub image: Option<String>,
    /// Bind a host path: SRC:DST[:ro|:rw] (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    pub binds: Vec<Bind>,
    /// Set an environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default: the image's, else /).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// User inside the sandbox: UID[:GID] (default: the image's, else 0).
    #[arg(long, short = 'u', value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Network: none (only lo), pasta (a namespace of its own connected to
    /// the outside by pasta, with no way to this host's loopback) or host
    /// (this host's network namespace: its loopback services, abstract unix
    /// sockets and ports; only when asked for).
    #[arg(long, default_value = "none")]
    pub network: Network,
    /// GPUs: `all`, an index, `GPU-<uuid>`, `nvidia.com/gpu=NAME` (comma-separated).
    #[arg(long, value_name = "SPEC")]
    pub gpus: Option<String>,
    #[command(flatten)]
    pub gpu_root: GpuRootArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Wall-clock time limit, e.g. 30, 30s, 5m, 1h; the whole sandbox is killed then.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Hostname inside the sandbox.
    #[arg(long, default_value = "sandbox")]
    pub hostname: String,
    /// Make the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Keep what the run wrote (its upper layer) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Write where this start spent its time (JSON: microseconds per phase)
    /// to FILE; used by `bench startup`.
    #[arg(long, hide = true, value_name = "FILE")]
    pub phases: Option<PathBuf>,
    /// The command and its arguments (default with --image: its Cmd).
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "image",
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

// ---- Job bounds (issue 13, holes 8 and 9): what a job may make the
// worker parse and unpack. ----

/// Caps on what a job's programs and bundles make the worker read.
#[derive(Debug, Args, Clone)]
pub struct JobBoundArgs {
    /// Largest metadata.yaml, scores.json/scores.txt or detailed results
    /// page the worker reads, e.g. 8m; a larger one fails the job.
    #[arg(long, value_parser = parse_bytes, env = "COMPUTE_WORKER_PARSED_FILE_MAX",
          default_value = "8m")]
    pub parsed_file_max: u64,
    /// Largest unpacked size of one bundle (zip), e.g. 10g.
    #[arg(long, value_parser = parse_bytes, env = "COMPUTE_WORKER_BUNDLE_MAX",
          default_value = "10g")]
    pub bundle_max: u64,
    /// Most entries (files, directories, links) in one bundle.
    #[arg(long, env = "COMPUTE_WORKER_BUNDLE_MAX_ENTRIES", default_value_t = crate::job::bounds::DEFAULT_BUNDLE_MAX_ENTRIES)]
    pub bundle_max_entries: usize,
}

impl JobBoundArgs {
    pub fn bounds(&self) -> crate::job::bounds::JobBounds {
        crate::job::bounds::JobBounds {
            parsed_file_max: self.parsed_file_max,
            bundle_max: self.bundle_max,
            bundle_max_entries: self.bundle_max_entries,
        }
    }
}

/// `setup-host`.
#[derive(Debug, Args)]
pub struct SetupHostArgs {
    /// The user the worker will run as (must exist).
    #[arg(long)]
    pub user: String,
    /// The cgroup subtree to delegate to the user, as a path inside the
    /// cgroup hierarchy.
    #[arg(long, default_value = "/compute-worker")]
    pub cgroup_parent: PathBuf,
    /// Print the commands and edits instead of doing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply everything under this directory instead of `/` (etc files,
    /// systemd drop-ins, /sys/fs/cgroup, the user's home): for tests.
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}

/// `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// An image jobs will use: check that its registry answers (default:
    /// the first search registry, docker.io unless registries.conf says).
    #[arg(long)]
    pub image: Option<String>,
    /// Verify the broker's TLS certificate (as `serve --verify-broker-tls`).
    #[arg(long, env = "COMPUTE_WORKER_VERIFY_BROKER_TLS")]
    pub verify_broker_tls: bool,
    /// The broker's private CA (as `serve --broker-ca-file`).
    #[arg(long, env = "COMPUTE_WORKER_BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu_root: GpuRootArg,
    #[command(flatten)]
    pub network: NetworkArg,
}

/// `install-service`.
#[derive(Debug, Args)]
pub struct InstallServiceArgs {
    /// Print the unit and the commands instead of writing and starting it.
    #[arg(long, alias = "print")]
    pub dry_run: bool,
    /// How long `serve` lets running jobs finish on stop; the unit gives it
    /// one more minute before systemd kills what is left.
    #[arg(long, value_parser = parse_duration, default_value = "5m", env = "COMPUTE_WORKER_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_bound_defaults_are_the_libraries() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            b: super::JobBoundArgs,
        }
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.b.bounds(), crate::job::bounds::JobBounds::default());
    }
}
