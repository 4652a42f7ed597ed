//! The sandbox helper: the `compute-worker __sandbox` process.
//!
//! It is started fresh for every run (a fork of a single-threaded caller,
//! else a fork+exec: see `process.rs`), so it is single-threaded and may
//! fork freely. Its life:
//!
//! 1. unshare a user namespace and wait while the caller writes the id maps;
//! 2. become root in it, unshare mount and pid (and network) namespaces, and
//!    fork the *keeper*, pid 1 of the new pid namespace;
//! 3. the keeper mounts the overlay rootfs, creates and starts the container
//!    with libcontainer, and waits for it, the time limit or a kill request.
//!
//! Every process of the sandbox lives in the keeper's pid namespace, so when
//! the keeper dies (it gets SIGKILL when the helper dies, and it exits when
//! the caller's end of the control socket closes) the kernel kills them all,
//! and every mount lives in the keeper's mount namespace, so none outlives it.

use std::fs::{self, File};
use std::io::BufReader;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use super::cgroup::{self, Delegation};
use super::spec::{self, CgroupSettings};
use super::types::{exit_code, Network, Outcome, RunSpec};
use super::wire::{self, fds, Command, Event, Task};

/// The helper's log filter variable: its own, because libcontainer logs
/// from the container's init process land in the program's stderr, which
/// participants read.
pub const LOG_VAR: &str = "COMPUTE_WORKER_SANDBOX_LOG";
/// The helper's log filter when [`LOG_VAR`] is not set.
pub const LOG_DEFAULT: &str = "error,libcontainer=off,libcgroups=off";

/// Entry point of a helper forked from its caller (see `process.rs`): the
/// caller's logging gives way to the helper's own. Never returns.
pub fn main_forked() -> ! {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_VAR)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_DEFAULT));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish();
    // This process has one thread, and its forks copy its default.
    let _logging = tracing::subscriber::set_default(logger);
    main()
}

/// Entry point of `compute-worker __sandbox`. Never returns.
pub fn main() -> ! {
    let code = match run_helper() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("compute-worker sandbox helper: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn control_socket() -> UnixStream {
    // SAFETY: the caller starts us with the control socket on this fd and
    // nothing else in this process owns it.
    unsafe { UnixStream::from_raw_fd(fds::CONTROL) }
}

fn run_helper() -> Result<()> {
    let mut control = control_socket();
    let mut reader = BufReader::new(control.try_clone()?);
    let task: Task = wire::recv(&mut reader)?.context("no task on the control socket")?;

    unshare(CloneFlags::CLONE_NEWUSER).context("unshare(CLONE_NEWUSER)")?;
    wire::send(&mut control, &Event::Unshared)?;
    match wire::recv::<Command>(&mut reader)? {
        Some(Command::Mapped) => {}
        _ => return Ok(()), // the caller gave up
    }
    become_root()?;

    match task {
        Task::Remove { paths } => {
            let errors = paths
                .iter()
                .filter_map(|p| {
                    remove_tree(p)
                        .err()
                        .map(|e| format!("{}: {e}", p.display()))
                })
                .collect();
            wire::send(&mut control, &Event::Removed { errors })?;
            Ok(())
        }
        Task::Unpack {
            media_type,
            dest,
            opts,
        } => {
            // SAFETY: the caller starts us with the layer stream on this fd
            // for an Unpack task, and nothing else in this process owns it.
            let input = unsafe { File::from_raw_fd(fds::INPUT) };
            let result = rootfs_cache::unpack_layer_from(input, &media_type, &dest, &opts)
                .map_err(|e| e.to_string());
            wire::send(&mut control, &Event::Unpacked { result })?;
            Ok(())
        }
        Task::ProbeOverlay { dir } => {
            let result = probe_overlay(&dir).map_err(|e| format!("{e:#}"));
            wire::send(&mut control, &Event::Probed { result })?;
            Ok(())
        }
        Task::Run {
            run,
            id,
            rundir,
            scratch,
            cgroup,
            seccomp,
        } => {
            let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
            if run.network == Network::None {
                flags |= CloneFlags::CLONE_NEWNET;
            }
            unshare(flags).context("unshare(mount, pid, net namespaces)")?;
            // The keeper's word that the sandbox is gone: see `Keeper::main`.
            let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            // SAFETY: this process is single-threaded (a fresh exec of the
            // binary, or a fork of a single-threaded caller, that has
            // started no threads), so fork is sound.
            match unsafe { fork() }.context("fork")? {
                ForkResult::Child => {
                    drop(done_r);
                    let keeper = Keeper {
                        control,
                        reader,
                        run: *run,
                        id,
                        rundir,
                        scratch,
                        cgroup,
                        seccomp,
                    };
                    std::process::exit(keeper.main(File::from(done_w)))
                }
                ForkResult::Parent { child } => {
                    drop((reader, done_w));
                    let word = read_word(File::from(done_r));
                    // Every process of the sandbox is gone (the keeper said
                    // so, or it died, and its pid namespace with it): remove
                    // the overlay's upper and work directories while the
                    // keeper exits (its mount namespace, the costlier part
                    // of its exit, goes then). One after the other: a
                    // process that unshared a pid namespace cannot start
                    // threads.
                    let (upper, work) = super::rundir::layout(&rundir);
                    if !run.keep_upper {
                        let _ = remove_tree(&upper);
                    }
                    let _ = remove_tree(&work);
                    let status = waitpid(child, None).context("waiting for the keeper")?;
                    if word == Some(CALLER_GONE) {
                        // Nobody will clean up after us: leave nothing.
                        let _ = remove_tree(&rundir);
                    }
                    if word.is_none() {
                        let _ = wire::send(
                            &mut control,
                            &Event::Failed {
                                message: format!("the sandbox keeper died: {status:?}"),
                                code: exit_code::SANDBOX_ERROR,
                            },
                        );
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The keeper's last word to the helper: it reported to the caller.
const REPORTED: u8 = b'r';
/// The keeper's last word to the helper: the caller is gone.
const CALLER_GONE: u8 = b'g';

/// One byte from the keeper, or `None` when it died without a word.
fn read_word(mut pipe: File) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        match std::io::Read::read(&mut pipe, &mut b) {
            Ok(1) => return Some(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return None,
        }
    }
}

fn become_root() -> Result<()> {
    let root_g = Gid::from_raw(0);
    let root_u = Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g).context("setresgid(0) in the user namespace")?;
    nix::unistd::setresuid(root_u, root_u, root_u).context("setresuid(0) in the user namespace")?;
    // Only possible when setgroups is allowed (newgidmap allows it); drop
    // the supplementary groups the caller had, which are unmapped anyway.
    let _ = nix::unistd::setgroups(&[]);
    Ok(())
}

/// Remove a directory tree as root of the user namespace, making
/// directories writable first (a program may have removed their w bit).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

/// pid 1 of the sandbox's outer pid namespace.
struct Keeper {
    control: UnixStream,
    reader: BufReader<UnixStream>,
    run: RunSpec,
    id: String,
    rundir: PathBuf,
    scratch: PathBuf,
    cgroup: Option<Delegation>,
    seccomp: Option<super::seccomp::Program>,
}

/// Why the keeper stopped waiting.
enum Stop {
    Exited(WaitStatus),
    TimedOut,
    KillRequested,
}

impl Keeper {
    /// Returns the keeper's exit code: 0 once it has reported to the
    /// caller. Its last act is a word to the helper on `done` (which then
    /// removes the run's upper and work directories).
    fn main(mut self, mut done: File) -> i32 {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        let cgroup_path = self.cgroup.as_ref().map(|d| d.run_path(&self.id));
        let scratch = self.scratch.clone();
        let event = match self.setup_and_run(&scratch, cgroup_path.as_deref()) {
            Ok(outcome) => Event::Finished { outcome },
            Err(e) => {
                let message = format!("{e:#}");
                let code = classify_error(&message);
                Event::Failed { message, code }
            }
        };
        kill_all_and_reap();
        if let (Some(d), Some(path)) = (&self.cgroup, &cgroup_path) {
            d.remove(path);
        }
        // No umount: the scratch tmpfs and the overlay go with this mount
        // namespace when the keeper exits, and each explicit umount waits
        // for an RCU grace period.
        let reported = wire::send(&mut self.control, &event).is_ok();
        let word = if reported { REPORTED } else { CALLER_GONE };
        let _ = std::io::Write::write_all(&mut done, &[word]);
        if reported {
            0
        } else {
            1
        }
    }

    fn setup_and_run(&mut self, scratch: &Path, cgroup_path: Option<&Path>) -> Result<Outcome> {
        make_mounts_private()?;
        if self.run.network == Network::None {
            super::netns::loopback_up().context("bringing up lo in the new network namespace")?;
        }
        let (rootfs, bundle, state) = super::rundir::scratch_layout(scratch);
        mount_scratch(scratch, [&rootfs, &bundle, &state])?;
        let rootfs = rootfs.as_path();
        self.mount_rootfs(rootfs)?;
        create_workdir(rootfs, &self.run.cwd);
        match &self.cgroup {
            None if cgroup::host_version() == cgroup::Version::V1 => hide_v1_cgroups()?,
            None => {}
            Some(d) => {
                d.check_limits(&self.run.limits)?;
                let run_path = d.run_path(&self.id);
                for m in &d.v1_masked {
                    mask_hierarchy(m, &run_path)?;
                }
            }
        }

        let mems = self.cgroup.as_ref().and_then(|d| d.parent_mems());
        let cg = cgroup_path.map(|path| CgroupSettings {
            path,
            mems: mems.as_deref(),
        });
        let nofile_hard =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(_, hard)| hard)
                .unwrap_or(1024);
        let config = spec::build(&self.run, rootfs, cg.as_ref(), nofile_hard);
        fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)
            .context("writing config.json")?;

        tracing::debug!("rootfs mounted, config.json written");
        let started = Instant::now();
        let mut container = ContainerBuilder::new(self.id.clone(), SyscallType::default())
            .with_root_path(&state)
            .context("libcontainer state directory")?
            .with_stdin(open_dev_null()?)
            .with_stdout(dup_fd(fds::STDOUT)?)
            .with_stderr(dup_fd(fds::STDERR)?)
            .validate_id()
            .context("container id")?
            .with_executor(super::seccomp::Executor {
                program: self.seccomp.take(),
            })
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| anyhow!("{e}"))
            .context("creating the container")?;
        if let (Some(d), Some(path), false) =
            (&self.cgroup, cgroup_path, self.run.limits.is_empty())
        {
            let pid = container.pid().context("the container has no pid")?;
            d.confirm_joined(path, pid.as_raw())
                .map_err(|why| anyhow!(why))?;
        }
        container
            .start()
            .map_err(|e| anyhow!("{e}"))
            .context("starting the container")?;
        tracing::debug!("container created");
        let pid = container.pid().context("the container has no pid")?;
        wire::send(&mut self.control, &Event::Started { pid: pid.as_raw() })?;

        let deadline = self.run.timeout.map(|t| started + t);
        let stop = self.wait(pid, deadline)?;
        let status = match stop {
            Stop::Exited(status) => status,
            Stop::TimedOut | Stop::KillRequested => {
                kill_all_and_reap();
                let _ = container.delete(true);
                return Ok(if matches!(stop, Stop::TimedOut) {
                    Outcome::TimedOut
                } else {
                    Outcome::Killed
                });
            }
        };
        // The program is gone: nothing else of the sandbox may live on.
        kill_all_and_reap();
        let ooms = match (&self.cgroup, cgroup_path) {
            (Some(d), Some(p)) => d.oom_kills(p),
            _ => 0,
        };
        let _ = container.delete(true);
        Ok(match status {
            WaitStatus::Exited(_, code) if ooms > 0 && code != 0 => Outcome::OomKilled,
            WaitStatus::Signaled(_, Signal::SIGKILL, _) if ooms > 0 => Outcome::OomKilled,
            WaitStatus::Exited(_, code) => Outcome::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Outcome::Signaled(sig as i32),
            other => bail!("unexpected wait status of the program: {other:?}"),
        })
    }

    fn mount_rootfs(&self, rootfs: &Path) -> Result<()> {
        let (upper, work) = super::rundir::layout(&self.rundir);
        // `volatile`: no sync of the upper layer at unmount. The layer is
        // thrown away after the run, and that sync costs milliseconds.
        mount_overlay(
            &self.run.layers,
            &upper,
            &work,
            rootfs,
            !self.run.keep_upper,
        )
    }

    /// Wait for the program's exit, the deadline, or a kill request.
    fn wait(&mut self, pid: Pid, deadline: Option<Instant>) -> Result<Stop> {
        let pidfd = pidfd_open(pid)?;
        let control = self.reader.get_ref().try_clone()?;
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Stop::TimedOut);
                    }
                    // Round up so that we never wake just before the deadline.
                    let ms = left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
                Ok(_) => {}
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                let status = waitpid(pid, Some(WaitPidFlag::__WALL)).context("waitpid")?;
                return Ok(Stop::Exited(status));
            }
            if ready(&fds[1]) {
                // A kill request, or the caller is gone: either way, stop.
                match wire::recv::<Command>(&mut self.reader) {
                    Ok(Some(Command::Mapped)) => continue,
                    _ => return Ok(Stop::KillRequested),
                }
            }
        }
    }
}

/// A nosuid, nodev, noexec tmpfs with `options` on `mount_point`.
fn mount_tmpfs(mount_point: &Path, options: &str) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        mount_point,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
}

/// Mount the keeper's scratch tmpfs on `mount_point` (a directory every run
/// shares: the mount exists in this mount namespace only) and make `dirs`
/// in it.
fn mount_scratch<const N: usize>(mount_point: &Path, dirs: [&Path; N]) -> Result<()> {
    mount_tmpfs(mount_point, "mode=700,size=16m")
        .with_context(|| format!("mounting a scratch tmpfs on {}", mount_point.display()))?;
    for d in dirs {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(())
}

/// Mount an overlay of `layers` (top first) with `upper`/`work` on
/// `target`, as root of a user namespace (`userxattr`).
fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
    for p in layers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains([',', ':']) || !p.is_absolute() {
            bail!(
                "layer path {} cannot be used in an overlay mount (it must be absolute and hold no `,` or `:`)",
                p.display()
            );
        }
        if !p.is_dir() {
            bail!("rootfs layer {} is not a directory", p.display());
        }
    }
    let lower: Vec<String> = layers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let volatile = if volatile { ",volatile" } else { "" };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr{volatile}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("mounting the overlay rootfs ({opts})"))
}

/// The `ProbeOverlay` task: in a new mount namespace, mount an overlay of
/// `dir/lower` on `dir/merged` exactly as a run mounts its rootfs, read
/// through it and write through it. The mount goes with the namespace.
fn probe_overlay(dir: &Path) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    make_mounts_private()?;
    let merged = dir.join("merged");
    mount_overlay(
        &[dir.join("lower")],
        &dir.join("upper"),
        &dir.join("work"),
        &merged,
        true,
    )?;
    fs::read(merged.join(PROBE_FILE)).context("reading a lower-layer file through the overlay")?;
    fs::write(merged.join("written"), b"ok").context("writing through the overlay")?;
    if !dir.join("upper/written").is_file() {
        bail!("a file written through the overlay did not land in its upper layer");
    }
    Ok(())
}

/// Name of the file `probe_overlay` expects in its lower layer.
pub const PROBE_FILE: &str = "probe";

fn make_mounts_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the mount namespace private")
}

/// Create the working directory in the run's upper layer when the image
/// lacks it, as Docker and runc do. Stops at any symlink: the path must not
/// be resolved on the host side of the rootfs.
fn create_workdir(rootfs: &Path, cwd: &str) {
    let mut p = rootfs.to_path_buf();
    for part in Path::new(cwd).components() {
        match part {
            std::path::Component::Normal(name) => p.push(name),
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            _ => return,
        }
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return,
            Err(_) => {
                if fs::create_dir(&p).is_err() {
                    return;
                }
            }
        }
    }
}

/// On a cgroup v1 host with no delegated subtree, present libcontainer a
/// read-only cgroup2 hierarchy instead: its v2 manager treats a read-only
/// hierarchy as "run without cgroup limits" in rootless mode, while its v1
/// manager has no such fallback and would fail on the first write.
fn hide_v1_cgroups() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWCGROUP).context("unshare(CLONE_NEWCGROUP)")?;
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting a read-only cgroup2 view over /sys/fs/cgroup")
}

/// Cover a v1 hierarchy with a tmpfs (see `Delegation::v1_masked`) that
/// holds just the files libcontainer writes for a run there.
fn mask_hierarchy(mount_point: &Path, run_path: &Path) -> Result<()> {
    mount_tmpfs(mount_point, "mode=755,size=1m")
        .with_context(|| format!("masking cgroup hierarchy {}", mount_point.display()))?;
    let dir = mount_point.join(run_path.strip_prefix("/").unwrap_or(run_path));
    fs::create_dir_all(&dir)?;
    for f in ["cgroup.procs", "tasks", "devices.allow", "devices.deny"] {
        fs::write(dir.join(f), b"")?;
    }
    Ok(())
}

/// Kill every process of the keeper's pid namespace but the keeper, and
/// reap them all.
fn kill_all_and_reap() {
    // From pid 1 of a namespace, kill(-1) reaches every other process in it.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    // Until ECHILD: nothing is left.
    while let Ok(_) | Err(nix::errno::Errno::EINTR) =
        waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL))
    {}
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn dup_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: the caller starts the helper with these fds open; we only
    // borrow them long enough to duplicate.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .with_context(|| format!("fd {fd} of the helper"))
}

fn open_dev_null() -> Result<OwnedFd> {
    Ok(File::open("/dev/null")?.into())
}

/// The exit code for a setup failure: 127 when the command is missing, 126
/// when it cannot be executed, 125 otherwise.
fn classify_error(message: &str) -> i32 {
    if message.contains("not found in $PATH")
        || message.contains("No such file or directory") && message.contains("execvp")
    {
        exit_code::NOT_FOUND
    } else if message.contains("does not have correct permissions") {
        exit_code::NOT_EXECUTABLE
    } else {
        exit_code::SANDBOX_ERROR
    }
}
