//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::template::parse_path;
use crate::sandbox::{Bind, Network};

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
    Doctor(Box<crate::ops::doctor::DoctorArgs>),
    /// Set the host up for the worker's user (as root, once): subordinate
    /// ids, cgroup delegation, linger, cache directories.
    SetupHost(Box<crate::ops::setup_host::SetupHostArgs>),
    /// Write a systemd user unit that runs `serve`, and start it.
    InstallService(crate::ops::service::InstallServiceArgs),
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
    /// With USE_GPU=true: give each slot its own K GPUs (by UUID) out of
    /// GPU_DEVICE's; 0 (default): every slot gets all of them.
    #[arg(long, default_value_t = 0, env = "COMPUTE_WORKER_GPUS_PER_SLOT")]
    pub gpus_per_slot: usize,
    /// A cpuset per slot, in slot order (repeatable: `--slot-cpus 0-7 --slot-cpus 8-15`).
    #[arg(long = "slot-cpus", value_name = "CPUSET")]
    pub slot_cpus: Vec<String>,
    #[command(flatten)]
    pub gpu_root: GpuRootArg,
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
    /// Organiser data mounted read-only at /app/data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Execution time limit of each step in seconds (0: none).
    #[arg(long, default_value_t = 600)]
    pub time_limit: u64,
    /// Where the results, logs and scores go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Network of the programs: host or none.
    #[arg(long, default_value = "host")]
    pub network: Network,
    #[command(flatten)]
    pub limits: LimitArgs,
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
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Image reference, e.g. busybox, python:3.12, registry:5000/team/img@sha256:...
    pub image: String,
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
}

/// Resource limits of each program, through a delegated cgroup.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Memory limit, e.g. 512m, 2g (needs a delegated cgroup).
    #[arg(long, value_parser = parse_bytes, env = "COMPUTE_WORKER_MEMORY")]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads (needs a delegated cgroup).
    #[arg(long, env = "COMPUTE_WORKER_PIDS")]
    pub pids: Option<i64>,
    /// cpuset, e.g. 0-1 or 0,2 (needs a delegated cgroup).
    #[arg(long, env = "COMPUTE_WORKER_CPUS")]
    pub cpus: Option<String>,
}

impl LimitArgs {
    pub fn limits(&self) -> crate::sandbox::Limits {
        crate::sandbox::Limits {
            memory: self.memory,
            pids: self.pids,
            cpus: self.cpus.clone(),
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
    /// Network: none (only lo) or host.
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

/// `90s`, `5m`, `3h`, `2d`: a coarse age for listings.
pub fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not UID[:GID] (numbers)");
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// `123`, `64k`, `512m`, `2g` (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512m or 2g"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("`{s}`: a size must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// `30`, `30s`, `1.5m`, `2h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration like 30s, 5m or 1h");
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n.is_nan() || n < 0.0 || !n.is_finite() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:5").unwrap(), (1000, 5));
    }
}
