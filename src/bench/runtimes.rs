//! The runtimes a startup benchmark compares: `compute-worker exec`, the
//! bare program (the floor), and every OCI runtime found on `$PATH`
//! (runc, crun, youki, each rootless on one bundle) and podman
//! (`--network none --rootfs`). Each one is tried once before the rounds;
//! one that is missing or fails that trial is skipped, with the reason.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, RootBuilder, Spec};
use serde::{Deserialize, Serialize};

use super::program::PATH_IN_ROOTFS;
use crate::sandbox::{pidfd_open, Output, RunSpec, Sandbox, SandboxConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

/// The OCI runtimes looked for on `$PATH`, in the order reported.
pub const OCI_RUNTIMES: [&str; 3] = ["runc", "crun", "youki"];
/// Every runtime the benchmark knows, in the order reported.
pub const KNOWN: [&str; 7] = [
    "floor",
    "compute-worker",
    SERVE_PATH,
    "runc",
    "crun",
    "youki",
    "podman",
];

/// How long one start may take before it counts as hung (and is killed).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A runtime left out, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// A runtime to measure.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    /// The command line of one start, with `{id}` for the container id
    /// (for the in-process one, what it does).
    pub argv: Vec<String>,
    /// How it was set up, when that is worth saying.
    pub note: Option<String>,
    /// Started in this process through the library, not as a command.
    pub in_process: Option<Arc<InProcess>>,
}

/// The sandbox library as `serve`'s job runner uses it: a held user
/// namespace and the fork server, from a caller with threads.
#[derive(Debug)]
pub struct InProcess {
    pub cfg: SandboxConfig,
    pub run: RunSpec,
}

/// The name of the in-process runtime.
pub const SERVE_PATH: &str = "compute-worker-serve-path";

/// Where the benchmark keeps its files.
pub struct Workdir {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub state: PathBuf,
}

impl Workdir {
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
}

static STARTS: AtomicU64 = AtomicU64::new(0);

impl Runtime {
    /// The command of one start, with a container id of its own.
    pub fn command(&self) -> Command {
        let id = format!(
            "cwbench-{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut argv = self.argv.iter().map(|a| a.replace("{id}", &id));
        let mut cmd = Command::new(argv.next().unwrap_or_default());
        cmd.args(argv).stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// One start: its wall time, or why it failed.
    pub fn start_once(&self) -> Result<Duration, String> {
        match &self.in_process {
            Some(p) => start_in_process(p),
            None => time_command(self.command()),
        }
    }
}

/// `Sandbox::start` to the end of its teardown.
fn start_in_process(p: &InProcess) -> Result<Duration, String> {
    let began = Instant::now();
    let sandbox =
        Sandbox::start(&p.cfg, &p.run, Output::Null, Output::Null).map_err(|e| e.to_string())?;
    match sandbox.wait(&p.cfg) {
        Ok(o) if o.success() => Ok(began.elapsed()),
        Ok(o) => Err(format!("it failed ({o})")),
        Err(e) => Err(e.to_string()),
    }
}

/// Run `cmd` to its end (killed after [`START_TIMEOUT`]): its wall time, or
/// how it failed with the last line of its stderr. The stderr goes to an
/// unnamed file read once the command has ended, and the end is waited for
/// on a pidfd: nothing of the benchmark runs beside a start while it is
/// timed.
pub fn time_command(mut cmd: Command) -> Result<Duration, String> {
    let mut stderr = unnamed_file().map_err(|e| format!("cannot make its stderr file: {e}"))?;
    cmd.stderr(
        stderr
            .try_clone()
            .map_err(|e| format!("cannot make its stderr file: {e}"))?,
    );
    let began = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    drop(cmd);
    let status = wait_at_most(&mut child, START_TIMEOUT);
    let elapsed = began.elapsed();
    let mut text = String::new();
    let _ = stderr.seek(SeekFrom::Start(0));
    let _ = stderr.take(64 * 1024).read_to_string(&mut text);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match status {
        Ok(s) if s.success() => Ok(elapsed),
        Ok(s) => Err(if last.is_empty() {
            format!("it failed ({s})")
        } else {
            format!("it failed ({s}): {last}")
        }),
        Err(e) => Err(e),
    }
}

/// An unnamed file in the temp directory (gone when closed).
fn unnamed_file() -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(std::env::temp_dir())
}

/// The child's exit status, or an error once `limit` has passed (the child
/// is then killed and reaped).
fn wait_at_most(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let pidfd = pidfd_open(Pid::from_raw(child.id() as i32))
        .map_err(|e| format!("cannot wait for it: {e:#}"))?;
    let timeout = PollTimeout::try_from(limit.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    let ended = loop {
        match poll(
            &mut [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)],
            timeout,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Err(format!("cannot wait for it: {e}")),
            Ok(n) => break Ok(n > 0),
        }
    };
    if !ended? {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("no exit within {}s", limit.as_secs()));
    }
    child.wait().map_err(|e| format!("cannot wait for it: {e}"))
}

/// Find, set up and try every runtime of `wanted` (all known ones when
/// empty). `self_exe` is this binary, `sandbox_args` what its `exec` gets
/// before `--rootfs`; `library` the sandbox configuration of the
/// in-process runtime (or why there is none).
pub fn discover(
    work: &Workdir,
    self_exe: &Path,
    sandbox_args: &[String],
    library: Result<SandboxConfig, String>,
    wanted: &[String],
) -> Result<(Vec<Runtime>, Vec<Skipped>)> {
    if let Some(w) = wanted.iter().find(|w| !KNOWN.contains(&w.as_str())) {
        anyhow::bail!("unknown runtime `{w}` (known: {})", KNOWN.join(", "));
    }
    let mut runtimes = Vec::new();
    let mut skipped = Vec::new();
    let rootfs = work.rootfs.display().to_string();
    let program_on_host = work
        .rootfs
        .join(PATH_IN_ROOTFS.trim_start_matches('/'))
        .display()
        .to_string();
    let mut found: Vec<Runtime> = vec![
        Runtime {
            name: "floor".into(),
            argv: vec![program_on_host],
            note: Some("the program itself, no sandbox".into()),
            in_process: None,
        },
        Runtime {
            name: "compute-worker".into(),
            argv: [self_exe.display().to_string(), "exec".into()]
                .into_iter()
                .chain(sandbox_args.iter().cloned())
                .chain([
                    "--rootfs".into(),
                    rootfs.clone(),
                    "--".into(),
                    PATH_IN_ROOTFS.into(),
                ])
                .collect(),
            note: None,
            in_process: None,
        },
    ];
    match library {
        Ok(cfg) => found.push(Runtime {
            name: SERVE_PATH.into(),
            argv: vec!["Sandbox::start, wait, teardown, in this process".into()],
            note: Some(format!(
                "held user namespace, {}",
                if cfg.fork_server().is_some() {
                    "launchers from the fork server"
                } else {
                    "exec'd launchers (no fork server)"
                }
            )),
            in_process: Some(Arc::new(InProcess {
                run: RunSpec::new(&work.rootfs, vec![PATH_IN_ROOTFS.into()]),
                cfg,
            })),
        }),
        Err(why) => skipped.push(Skipped {
            name: SERVE_PATH.into(),
            reason: why,
        }),
    }
    let bundle = work.bundle();
    let mut bundle_written = false;
    for name in OCI_RUNTIMES {
        let Ok(path) = which::which(name) else {
            skipped.push(not_found(name));
            continue;
        };
        if !bundle_written {
            write_bundle(&bundle, &work.rootfs)?;
            bundle_written = true;
        }
        let root = work.dir.join(format!("{name}-state"));
        found.push(Runtime {
            name: name.into(),
            argv: vec![
                path.display().to_string(),
                "--root".into(),
                root.display().to_string(),
                "run".into(),
                "--bundle".into(),
                bundle.display().to_string(),
                "{id}".into(),
            ],
            note: None,
            in_process: None,
        });
    }
    let podman = which::which("podman").ok();
    for rt in found {
        if wanted.is_empty() || wanted.contains(&rt.name) {
            try_runtime(rt, &mut runtimes, &mut skipped);
        } else {
            skipped.push(excluded(&rt.name));
        }
    }
    match podman {
        None => skipped.push(not_found("podman")),
        Some(_) if !(wanted.is_empty() || wanted.iter().any(|w| w == "podman")) => {
            skipped.push(excluded("podman"));
        }
        Some(path) => {
            let runc = runtimes
                .iter()
                .find(|r| r.name == "runc")
                .map(|r| r.argv[0].clone());
            try_podman(&path, &rootfs, runc, &mut runtimes, &mut skipped);
        }
    }
    Ok((runtimes, skipped))
}

fn not_found(name: &str) -> Skipped {
    Skipped {
        name: name.into(),
        reason: "not found on $PATH".into(),
    }
}

fn excluded(name: &str) -> Skipped {
    Skipped {
        name: name.into(),
        reason: "not in --runtimes".into(),
    }
}

/// Keep `rt` when a trial start succeeds.
fn try_runtime(rt: Runtime, runtimes: &mut Vec<Runtime>, skipped: &mut Vec<Skipped>) {
    match rt.start_once() {
        Ok(_) => runtimes.push(rt),
        Err(why) => skipped.push(Skipped {
            name: rt.name,
            reason: format!("a trial start failed: {why}"),
        }),
    }
}

/// podman with its own default runtime; where that fails (crun refuses
/// hybrid cgroup hosts, say) and runc works, with runc.
fn try_podman(
    path: &Path,
    rootfs: &str,
    runc: Option<String>,
    runtimes: &mut Vec<Runtime>,
    skipped: &mut Vec<Skipped>,
) {
    let argv = |extra: &[String]| -> Vec<String> {
        [path.display().to_string(), "run".into()]
            .into_iter()
            .chain(extra.iter().cloned())
            .chain(
                [
                    "--rm",
                    "--network",
                    "none",
                    "--rootfs",
                    rootfs,
                    PATH_IN_ROOTFS,
                ]
                .map(String::from),
            )
            .collect()
    };
    // Rootless podman keeps a pause process holding its user namespace
    // once it has run: it outlives the benchmark, by podman's design.
    const PAUSE: &str = "its rootless pause process stays after the run";
    let plain = Runtime {
        name: "podman".into(),
        argv: argv(&[]),
        note: Some(PAUSE.into()),
        in_process: None,
    };
    let first = match plain.start_once() {
        Ok(_) => return runtimes.push(plain),
        Err(why) => why,
    };
    if let Some(runc) = runc {
        let with_runc = Runtime {
            name: "podman".into(),
            argv: argv(&["--runtime".into(), runc]),
            note: Some(format!(
                "with --runtime runc: its default runtime failed ({first}); {PAUSE}"
            )),
            in_process: None,
        };
        if with_runc.start_once().is_ok() {
            return runtimes.push(with_runc);
        }
    }
    skipped.push(Skipped {
        name: "podman".into(),
        reason: format!("a trial start failed: {first}"),
    });
}

/// A rootless bundle for `rootfs` that starts `/true`: the rootless spec
/// template with a network namespace of its own (as every other runtime
/// here gets one) and no terminal.
fn write_bundle(bundle: &Path, rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(bundle)?;
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let mut spec = Spec::rootless(uid, gid);
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .context("the bundle's root")?,
    ));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(vec![PATH_IN_ROOTFS.to_string()]));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    if let Some(linux) = spec.linux_mut() {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()
                .context("the bundle's network namespace")?,
        );
        linux.set_namespaces(Some(namespaces));
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )
    .context("writing the bundle's config.json")
}
