//! Rootless sandboxes: run one program in a youki (libcontainer) container
//! as an ordinary user.
//!
//! [`Sandbox::start`] starts the run's keeper in new namespaces (see
//! `process.rs`: a clone of a single-threaded caller, or through the
//! `compute-worker __sandbox` launcher for a caller with threads, tokio
//! included), gives its user namespace the caller's subordinate ids, and
//! returns once the program runs. The caller keeps only a socket, the
//! program's output pipes and the run directory.

pub mod cgroup;
mod child;
mod clone;
pub mod fork_server;
pub mod helper;
pub mod id_mode;
pub mod idmap;
pub mod image_files;
mod keeper;
mod netns;
pub mod pasta;
pub mod phases;
mod private_mounts;
mod process;
pub mod rundir;
pub mod seccomp;
mod seccomp_profile;
mod seccomp_single_id;
mod signals;
mod spawn;
pub mod spec;
pub mod types;
mod upper_dirs;
pub mod usage;
pub use upper_dirs::rootfs_tree_warning;
mod userns;
mod wire;
pub mod write_limit;

use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;

pub use cgroup::Delegation;
pub use child::pidfd_open;
pub use id_mode::{IdMode, IdModeSetting};
pub use idmap::IdMaps;
pub use types::{exit_code, Bind, Limits, Network, Outcome, RunSpec};
pub use usage::{PidsPeak, Usage, UsageSource};
pub use wire::UnpackFailure;

use child::ChildProcess;
use process::Started;
use rundir::RunDir;
use wire::{Command, Event, Task};

/// The host side of every sandbox: where runs keep their state, which ids
/// they map, which cgroup subtree they may use.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Run directories live in `<state_dir>/runs`.
    pub state_dir: PathBuf,
    /// The delegated cgroup subtree, if the host has one for this user.
    pub cgroup: Option<Delegation>,
    /// The `compute-worker` binary (exec'd as the launcher by callers
    /// with threads).
    pub binary: PathBuf,
    pub maps: IdMaps,
    /// Subordinate ids, or only the worker's own (see `id_mode.rs`).
    pub id_mode: IdMode,
    /// The user namespace every sandbox process joins, once held (see
    /// [`SandboxConfig::hold_user_namespace`]); without it each gets a new
    /// one, mapped by `newuidmap`/`newgidmap`.
    userns: Option<Arc<userns::HeldUserNamespace>>,
    /// The seccomp filter, loaded (or compiled) at the first run.
    seccomp: Arc<OnceLock<Result<Option<seccomp::Program>, String>>>,
    /// Clones launchers for a caller with threads (see `fork_server.rs`);
    /// without it such a caller execs the binary as its launcher.
    fork_server: Option<Arc<fork_server::ForkServer>>,
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(transparent)]
    IdMap(#[from] idmap::IdMapError),
    #[error("cannot create the run directory under {dir}: {source}")]
    RunDir { dir: PathBuf, source: io::Error },
    #[error("cannot start the sandbox process ({exe}): {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the sandbox process stopped talking: {0}")]
    Lost(String),
    /// The sandbox could not be set up; `code` is the exit code to report.
    #[error("{message}")]
    Setup { message: String, code: i32 },
    #[error("i/o with the sandbox process: {0}")]
    Io(#[from] io::Error),
}

impl SandboxError {
    /// The exit code `compute-worker exec` reports for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::Setup { code, .. } => *code,
            _ => exit_code::SANDBOX_ERROR,
        }
    }
}

/// Where the program's stdout or stderr goes.
pub enum Output {
    /// The caller's own stdout/stderr (no copy through the caller).
    Inherit,
    /// Discarded.
    Null,
    /// A pipe whose read end is returned in [`Sandbox::stdout`] / [`Sandbox::stderr`].
    Pipe,
}

impl SandboxConfig {
    /// A configuration for the current user: state under `state_dir`, this
    /// binary as the launcher, maps from /etc/subuid and /etc/subgid, or
    /// only the user's own ids (as `id_mode` says).
    pub fn for_current_user(
        state_dir: PathBuf,
        cgroup: Option<Delegation>,
        id_mode: IdModeSetting,
    ) -> Result<Self, SandboxError> {
        let (id_mode, maps) = id_mode::for_current_user(id_mode)?;
        Ok(SandboxConfig {
            state_dir,
            cgroup,
            binary: std::env::current_exe().map_err(|source| SandboxError::Spawn {
                exe: "/proc/self/exe".into(),
                source,
            })?,
            maps,
            id_mode,
            userns: None,
            seccomp: Arc::default(),
            fork_server: None,
        })
    }

    /// Start a fork server (see `fork_server.rs`) that every later
    /// sandbox process of this config (and its clones) is launched by,
    /// when the caller has threads by then. Call it early: it is an exec
    /// of the binary, with nothing of this process's memory.
    pub fn start_fork_server(&mut self) -> Result<(), SandboxError> {
        if self.fork_server.is_none() {
            let server = fork_server::ForkServer::start(&self.binary).map_err(|source| {
                SandboxError::Spawn {
                    exe: self.binary.clone(),
                    source,
                }
            })?;
            self.fork_server = Some(Arc::new(server));
        }
        Ok(())
    }

    /// The fork server, when one was started.
    pub fn fork_server(&self) -> Option<&fork_server::ForkServer> {
        self.fork_server.as_deref()
    }

    /// Make one user namespace with this config's maps and start every
    /// later sandbox process in it (a run's keeper, a layer unpack, a
    /// removal): for a caller that starts many, this saves mapping a new
    /// namespace each time (two setuid program starts). Every run still
    /// gets its own other namespaces. Nothing runs to hold it: this config
    /// (and its clones) keep a file descriptor.
    pub fn hold_user_namespace(&mut self) -> Result<(), SandboxError> {
        if self.userns.is_none() {
            self.userns = Some(Arc::new(userns::HeldUserNamespace::create(&self.maps)?));
        }
        Ok(())
    }

    /// The seccomp filter every run gets (`None` in a build without the
    /// `seccomp` feature): compiled once, cached in the state directory.
    fn seccomp_program(&self) -> Result<Option<seccomp::Program>, SandboxError> {
        self.seccomp
            .get_or_init(|| seccomp::program_for(&self.state_dir, self.id_mode))
            .clone()
            .map_err(|message| SandboxError::Setup {
                message,
                code: exit_code::SANDBOX_ERROR,
            })
    }

    /// Remove what crashed runs left behind: run directories (whose files
    /// may belong to subordinate ids, so this enters a user namespace) and
    /// their cgroups. Returns how many run directories were removed.
    pub fn clean_stale(&self) -> Result<usize, SandboxError> {
        let stale = rundir::stale(&self.state_dir);
        if !stale.is_empty() {
            let errors = self.remove_as_root(stale.clone())?;
            if let Some(e) = errors.first() {
                tracing::warn!(error = %e, "could not remove a stale run directory");
            }
        }
        if let Some(d) = &self.cgroup {
            d.remove_stale(|id| rundir::is_live(&self.state_dir, id));
        }
        Ok(stale.len())
    }

    /// What bounds a run with `limits`, for a job's log: which mechanism
    /// bounds its processes, and its writes.
    pub fn bounds_described(&self, limits: &Limits) -> String {
        let procs = match limits.pids.filter(|p| *p > 0) {
            None => "processes: no limit".to_string(),
            Some(n) if self.cgroup.as_ref().is_some_and(Delegation::has_pids) => {
                format!("processes: at most {n} per run (the cgroup pids controller)")
            }
            Some(n) => {
                let hard = spec::HardLimits::current().nproc;
                let n = (n as u64).min(hard);
                let shared = if self.userns.is_some() {
                    ", which this worker's runs share: together they stay under it"
                } else {
                    ""
                };
                format!(
                    "processes: at most {n} (RLIMIT_NPROC, as no delegated cgroup has the pids \
                     controller; the kernel counts the processes of the program's uid in the \
                     sandbox's user namespace{shared})"
                )
            }
        };
        let writes = match limits.write_max.filter(|c| *c > 0) {
            None => "disk writes: no limit".to_string(),
            Some(c) => format!(
                "disk writes: at most {} MiB (its image layer and writable job directories, \
                 measured every {} s or more; no single file larger: RLIMIT_FSIZE)",
                c >> 20,
                write_limit::MIN_INTERVAL.as_secs()
            ),
        };
        format!("{procs}; {writes}")
    }

    /// Delete paths as root of a user namespace with this config's maps.
    pub fn remove_as_root(&self, paths: Vec<PathBuf>) -> Result<Vec<String>, SandboxError> {
        match self.one_shot(&Task::Remove { paths }, None)? {
            Event::Removed { errors } => Ok(errors),
            other => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
        }
    }

    /// The `rootfs_cache::tree_digest` of `dir` as root of a user namespace
    /// with this config's maps (owners as the sandbox sees them).
    pub fn tree_digest(&self, dir: &Path) -> Result<Result<String, String>, SandboxError> {
        match self.one_shot(
            &Task::TreeDigest {
                dir: dir.to_path_buf(),
            },
            None,
        )? {
            Event::TreeDigested { result } => Ok(result),
            other => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
        }
    }

    /// Run a task that answers with one event, and wait for its process.
    fn one_shot(&self, task: &Task, input: Option<OwnedFd>) -> Result<Event, SandboxError> {
        let mut h = SandboxProcess::spawn(self, task, None, None, None, input)?;
        let event = h.next_event();
        let _ = h.child.wait();
        event
    }
}

impl SandboxConfig {
    /// Unpack an image layer read from `input` (a blob file or a pipe) as
    /// root of a user namespace with this config's maps, so files keep the
    /// owners the image gives them. `input` is handed to the sandbox
    /// process and closed here at once, so a writer at the other end of a
    /// pipe sees the reader go when that process does.
    pub fn unpack_layer(
        &self,
        input: OwnedFd,
        media_type: &str,
        dest: &Path,
        opts: &rootfs_cache::UnpackOptions,
    ) -> Result<Result<rootfs_cache::UnpackReport, wire::UnpackFailure>, SandboxError> {
        let task = Task::Unpack {
            media_type: media_type.to_string(),
            dest: dest.to_path_buf(),
            opts: opts.clone(),
        };
        match self.one_shot(&task, Some(input))? {
            Event::Unpacked { result } => Ok(result),
            other => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
        }
    }
}

impl SandboxConfig {
    /// Check that a sandbox's rootfs can be mounted: in a fresh user
    /// namespace with this config's maps, mount an overlay in the state
    /// directory (its filesystem holds every run's upper layer) exactly as
    /// a run does. `Ok(Err(why))` when the kernel refused.
    pub fn probe_overlay(&self) -> Result<Result<(), String>, SandboxError> {
        let dir = self
            .state_dir
            .join(format!(".probe-{}", std::process::id()));
        let made = (|| {
            for sub in ["lower", "upper", "work", "merged"] {
                std::fs::create_dir_all(dir.join(sub))?;
            }
            std::fs::write(dir.join("lower").join(helper::PROBE_FILE), b"probe")
        })();
        let result = made
            .map_err(|source| SandboxError::RunDir {
                dir: self.state_dir.clone(),
                source,
            })
            .and_then(|()| {
                match self.one_shot(&Task::ProbeOverlay { dir: dir.clone() }, None)? {
                    Event::Probed { result } => Ok(result),
                    other => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
                }
            });
        if std::fs::remove_dir_all(&dir).is_err() && dir.exists() {
            let _ = self.remove_as_root(vec![dir]);
        }
        result
    }
}

/// The sandbox process (or its launcher) and our end of its control socket.
struct SandboxProcess {
    /// Our child: the sandbox process, or the launcher that waits for it.
    child: ChildProcess,
    control: UnixStream,
    events: BufReader<UnixStream>,
    /// The sandbox process's pid in our pid namespace.
    pid: i32,
}

impl SandboxProcess {
    /// Start the sandbox process for `task`, map its user namespace, and
    /// return once it may run as root in it.
    fn spawn(
        cfg: &SandboxConfig,
        task: &Task,
        stdout: Option<&OwnedFd>,
        stderr: Option<&OwnedFd>,
        lock: Option<&File>,
        input: Option<OwnedFd>,
    ) -> Result<SandboxProcess, SandboxError> {
        let userns = cfg.userns.as_deref().map(AsFd::as_fd);
        let mut server = cfg.fork_server.as_deref();
        let (started, ours, events) = loop {
            let (ours, theirs) = UnixStream::pair()?;
            let null = File::options().write(true).open("/dev/null")?;
            // Duplicate every fd we hand over to a high number first, so
            // that the dup2 calls in the child cannot clobber one another.
            let handed: [OwnedFd; process::HANDED] = [
                dup_high(theirs.as_raw_fd())?,
                dup_high(stdout.map_or(null.as_raw_fd(), |f| f.as_raw_fd()))?,
                dup_high(stderr.map_or(null.as_raw_fd(), |f| f.as_raw_fd()))?,
                dup_high(lock.map_or(null.as_raw_fd(), |f| f.as_raw_fd()))?,
                dup_high(input.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd()))?,
            ];
            let null = dup_high(null.as_raw_fd())?;
            let started = fork_server::start(server, &cfg.binary, task, &handed, &null, userns)
                .map_err(|source| SandboxError::Spawn {
                    exe: cfg.binary.clone(),
                    source,
                })?;
            drop((handed, null));
            drop(theirs);
            let mut events = BufReader::new(ours.try_clone()?);
            let begun = match started {
                Started::Cloned(c) => Begun::Child(c),
                Started::Launcher(c) => Begun::NeedsTask(c),
                Started::ClonedLauncher(c) => Begun::Launched(c),
                // Only a launcher the dead server cloned still holds the
                // other end: it says `Cloned`, else the socket ends.
                Started::ServerLost => match wire::recv(&mut events) {
                    Ok(Some(Event::Cloned { pid })) => {
                        tracing::warn!(
                            pid,
                            "going on with the launcher the dead fork server cloned"
                        );
                        let launcher = fork_server::launcher_of(pid).ok_or_else(|| {
                            SandboxError::Lost(format!(
                                "the launcher of sandbox process {pid} is gone with the fork server"
                            ))
                        })?;
                        Begun::LaunchedAs(launcher, pid)
                    }
                    Ok(None) => {
                        tracing::warn!("no launcher was cloned; starting this sandbox by exec");
                        server = None;
                        continue;
                    }
                    other => {
                        return Err(SandboxError::Lost(format!(
                            "the fork server died while starting this sandbox: {other:?}"
                        )))
                    }
                },
            };
            break (begun, ours, events);
        };
        drop(input);

        let (child, send_task, cloned) = match started {
            Begun::Child(child) => (child, false, Some(None)),
            Begun::NeedsTask(child) => (child, true, None),
            Begun::Launched(child) => (child, false, None),
            Begun::LaunchedAs(child, pid) => (child, false, Some(Some(pid))),
        };
        let mut h = SandboxProcess {
            child,
            events,
            control: ours,
            pid: 0,
        };
        if send_task {
            wire::send(&mut h.control, task)?;
        }
        let pid = match cloned {
            // Our child is the sandbox process itself.
            Some(None) => h.child.id(),
            Some(Some(pid)) => pid as u32,
            None => match h.next_event() {
                Ok(Event::Cloned { pid }) => pid as u32,
                other => {
                    h.stop();
                    return Err(SandboxError::Lost(format!("unexpected {other:?}")));
                }
            },
        };
        h.pid = pid as i32;
        if userns.is_some() {
            // Mapped once, when it was made: the sandbox process goes on
            // without waiting for us.
            tracing::debug!(pid, "sandbox process cloned in the held user namespace");
            return Ok(h);
        }
        tracing::debug!(pid, "sandbox process cloned; writing id maps");
        if let Err(e) = cfg.maps.apply(pid) {
            h.stop();
            return Err(e.into());
        }
        wire::send(&mut h.control, &Command::Mapped)?;
        tracing::debug!("id maps written");
        Ok(h)
    }

    /// Kill our child (the sandbox process or its launcher, which takes
    /// the sandbox process with it) and reap it.
    fn stop(&mut self) {
        self.child.kill();
        let _ = self.child.wait();
    }

    /// The next event; while none is there, a byte readable on `interrupt`
    /// (a signal's self-pipe) asks the sandbox to be killed.
    fn next_event_interruptible(
        &mut self,
        interrupt: BorrowedFd<'_>,
    ) -> Result<Event, SandboxError> {
        while self.events.buffer().is_empty() {
            let mut fds = [
                PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                PollFd::new(interrupt, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
                Ok(_) => {}
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                break;
            }
            if ready(&fds[1]) {
                let mut drain = [0u8; 64];
                let _ = nix::unistd::read(interrupt.as_raw_fd(), &mut drain);
                let _ = wire::send(&mut self.control, &Command::Kill);
            }
        }
        self.next_event()
    }

    fn next_event(&mut self) -> Result<Event, SandboxError> {
        match wire::recv(&mut self.events)? {
            Some(Event::Failed { message, code }) => Err(SandboxError::Setup { message, code }),
            Some(e) => Ok(e),
            None => {
                let status = self.child.wait()?;
                Err(SandboxError::Lost(format!(
                    "the sandbox process exited ({status}) without reporting"
                )))
            }
        }
    }
}

/// How a sandbox process came to be, for [`SandboxProcess::spawn`].
enum Begun {
    /// Our child is the sandbox process.
    Child(ChildProcess),
    /// Our child is a launcher waiting for the task.
    NeedsTask(ChildProcess),
    /// Our child is a launcher that has the task and will say `Cloned`.
    Launched(ChildProcess),
    /// Our child is a launcher that said `Cloned` with this pid already.
    LaunchedAs(ChildProcess, i32),
}

pub(crate) fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd (or -1) and touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd that only we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(new) })
}

fn output_fds(o: &Output) -> io::Result<(Option<File>, Option<OwnedFd>)> {
    match o {
        Output::Inherit => Ok((None, None)),
        Output::Null => Ok((
            None,
            Some(File::options().write(true).open("/dev/null")?.into()),
        )),
        Output::Pipe => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok((Some(File::from(r)), Some(w)))
        }
    }
}

/// A running sandbox.
pub struct Sandbox {
    process: SandboxProcess,
    rundir: RunDir,
    keep_upper: bool,
    /// The program's pid in the sandbox's outer pid namespace.
    pub pid: i32,
    /// Read end of the program's stdout, with [`Output::Pipe`].
    pub stdout: Option<File>,
    /// Read end of the program's stderr, with [`Output::Pipe`].
    pub stderr: Option<File>,
    /// pasta, for `Network::Pasta`.
    net: Option<pasta::NetStack>,
}

/// Kills a sandbox from another thread.
pub struct Killer(UnixStream);

impl Killer {
    /// Kill the whole sandbox now; [`Sandbox::wait`] then returns
    /// [`Outcome::Killed`]. Harmless once the sandbox has ended.
    pub fn kill(&self) {
        let _ = wire::send(&mut &self.0, &Command::Kill);
    }
}

impl Sandbox {
    /// Start `run`. Returns once the program has been started.
    pub fn start(
        cfg: &SandboxConfig,
        run: &RunSpec,
        stdout: Output,
        stderr: Output,
    ) -> Result<Sandbox, SandboxError> {
        let configuration = phases::phase!("configuration");
        let seccomp = cfg.seccomp_program()?;
        let rundir = RunDir::create(&cfg.state_dir).map_err(|source| SandboxError::RunDir {
            dir: cfg.state_dir.clone(),
            source,
        })?;
        let (out_r, out_w) = output_fds(&stdout)?;
        let (err_r, err_w) = output_fds(&stderr)?;
        let stdout_fd = out_w.map_or_else(|| dup_high(1), Ok)?;
        let stderr_fd = err_w.map_or_else(|| dup_high(2), Ok)?;
        let mut run_in_mode = id_mode::for_mode(run, cfg.id_mode);
        image_files::set_home(&mut run_in_mode);
        let task = Task::Run {
            run: Box::new(run_in_mode),
            id: rundir.id.clone(),
            rundir: rundir.path.clone(),
            scratch: rundir.scratch.clone(),
            cgroup: cfg.cgroup.clone(),
            seccomp,
        };
        drop(configuration);
        let user_namespace = phases::phase!("user namespace");
        let started = SandboxProcess::spawn(
            cfg,
            &task,
            Some(&stdout_fd),
            Some(&stderr_fd),
            Some(&rundir.lock),
            None,
        )
        .and_then(|mut h| {
            drop(user_namespace);
            let _setup = phases::phase!("sandbox setup");
            let mut net = None;
            if run.network == Network::Pasta {
                let connected = pasta::NetStack::start(&cfg.binary, h.pid).and_then(|n| {
                    net = Some(n);
                    Ok(wire::send(&mut h.control, &Command::NetworkReady)?)
                });
                if let Err(e) = connected {
                    h.stop();
                    net.as_mut().map(pasta::NetStack::finish);
                    // A keeper that failed on its own (pasta saw it go)
                    // said why: that is the error.
                    return Err(match h.next_event() {
                        Err(failed @ SandboxError::Setup { .. }) => failed,
                        _ => e,
                    });
                }
            }
            let result = match h.next_event() {
                Ok(Event::Started { pid, times }) => {
                    times.record();
                    return Ok((h, pid, net));
                }
                Ok(other) => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
                Err(e) => Err(e),
            };
            h.stop();
            net.as_mut().map(pasta::NetStack::finish);
            result
        });
        drop((stdout_fd, stderr_fd));
        match started {
            Ok((process, pid, net)) => {
                tracing::debug!(pid, "program started");
                Ok(Sandbox {
                    process,
                    rundir,
                    keep_upper: run.keep_upper,
                    pid,
                    stdout: out_r,
                    stderr: err_r,
                    net,
                })
            }
            Err(e) => {
                // The sandbox process is gone (it failed, or was killed).
                finish_rundir(cfg, rundir, false, || {});
                Err(match e {
                    // libcontainer says no more: name the directory.
                    SandboxError::Setup { message, code }
                        if message.ends_with("failed to prepare rootfs") =>
                    {
                        let message = match upper_dirs::explain_unmapped(run, &cfg.maps) {
                            Some(why) => format!("{message}: {why}"),
                            None => message,
                        };
                        SandboxError::Setup { message, code }
                    }
                    e => e,
                })
            }
        }
    }

    /// A handle that kills this sandbox from elsewhere.
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(Killer(self.process.control.try_clone()?))
    }

    /// The run's upper layer (what it wrote), kept when `keep_upper` was set.
    pub fn upper_dir(&self) -> PathBuf {
        self.rundir.upper()
    }

    /// Wait until the program and everything it started have ended and the
    /// sandbox is torn down.
    pub fn wait(self, cfg: &SandboxConfig) -> Result<Outcome, SandboxError> {
        Ok(self.wait_inner(cfg, None)?.0)
    }

    /// [`Sandbox::wait`], with what the run used (read from its cgroup
    /// before it was removed, else from `getrusage`).
    pub fn wait_with_usage(self, cfg: &SandboxConfig) -> Result<(Outcome, Usage), SandboxError> {
        self.wait_inner(cfg, None)
    }

    /// [`Sandbox::wait`], killing the sandbox when `interrupt` becomes
    /// readable (the read end of a signal's self-pipe, say): a caller with
    /// no thread to spare can still stop it on Ctrl-C.
    pub fn wait_interruptible(
        self,
        cfg: &SandboxConfig,
        interrupt: BorrowedFd<'_>,
    ) -> Result<(Outcome, Usage), SandboxError> {
        self.wait_inner(cfg, Some(interrupt))
    }

    fn wait_inner(
        mut self,
        cfg: &SandboxConfig,
        interrupt: Option<BorrowedFd<'_>>,
    ) -> Result<(Outcome, Usage), SandboxError> {
        let program = phases::phase!("program");
        let event = match interrupt {
            Some(fd) => self.process.next_event_interruptible(fd),
            None => self.process.next_event(),
        };
        drop(program);
        let _teardown = phases::phase!("teardown");
        let result = match event {
            Ok(Event::Finished { outcome, usage }) => Ok((outcome, usage)),
            Ok(other) => Err(SandboxError::Lost(format!("unexpected {other:?}"))),
            Err(e) => Err(e),
        };
        tracing::debug!(?result, "sandbox finished");
        let crashed = matches!(result, Err(SandboxError::Lost(_)));
        if crashed {
            // The keeper died without its word: its pid namespace dies with
            // it, but only its end (our child's) says that all is gone.
            let _ = self.process.child.wait();
        }
        // After its report the keeper has killed every process of the
        // sandbox: the overlay's directories go while it exits.
        let mut net = self.net.take();
        finish_rundir(cfg, self.rundir, self.keep_upper && !crashed, || {
            let _ = self.process.child.wait();
        });
        // The keeper is gone: its pasta goes too.
        net.as_mut().map(pasta::NetStack::finish);
        tracing::debug!("run directory removed, sandbox gone");
        result
    }
}

/// Remove a run directory whose sandbox processes are all dead (keeping
/// the upper layer when asked); `wait_exit` waits for the sandbox process
/// itself to be gone, before the run's lock goes. Leftovers owned by
/// subordinate ids are removed from inside a user namespace.
fn finish_rundir(cfg: &SandboxConfig, dir: RunDir, keep_upper: bool, wait_exit: impl FnOnce()) {
    let left = rundir::remove_layers(&dir.path, keep_upper);
    wait_exit();
    if !left.is_empty() {
        tracing::debug!(
            ?left,
            "removing what the run left as root of a user namespace"
        );
        if let Err(e) = cfg.remove_as_root(left) {
            tracing::warn!(dir = %dir.path.display(), error = %e, "could not remove what a run left");
        }
    }
    if keep_upper {
        // Marks the directory as kept on purpose, not left by a crash.
        let _ = std::fs::write(dir.path.join(rundir::KEPT), b"");
    } else {
        let _ = std::fs::remove_file(dir.path.join("lock"));
        let _ = std::fs::remove_dir(&dir.path);
    }
}

/// The default state directory: `$XDG_STATE_HOME/compute-worker`, else
/// `~/.local/state/compute-worker`.
pub fn default_state_dir() -> PathBuf {
    dirs::state_dir()
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("compute-worker")
}
