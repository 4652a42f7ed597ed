//! The keeper: pid 1 of a run's outer pid namespace, root of its user
//! namespace, owner of its mount namespace. It mounts the overlay rootfs,
//! creates and starts the container with libcontainer, and waits for the
//! program, the time limit or a kill request.
//!
//! Every process of the sandbox lives in the keeper's pid namespace, so when
//! the keeper dies the kernel kills them all, and every mount lives in the
//! keeper's mount namespace, so none outlives it. When its caller is gone
//! (the control socket's end), it kills the sandbox and removes the run's
//! directory itself.

use std::fs::{self, File};
use std::io::BufReader;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
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
use nix::unistd::Pid;

use super::cgroup::{self, Delegation};
use super::child::pidfd_open;
use super::phases::{micros, KeeperTimes};
use super::private_mounts::make_mounts_private;
use super::rundir::remove_tree;
use super::spec::{self, CgroupSettings};
use super::types::{exit_code, Network, Outcome, RunSpec};
use super::usage::{self, Measured, PidsSampler};
use super::wire::{self, fds, Command, Event};

/// pid 1 of the sandbox's outer pid namespace.
pub struct Keeper {
    pub control: UnixStream,
    pub reader: BufReader<UnixStream>,
    pub run: RunSpec,
    pub id: String,
    pub rundir: PathBuf,
    pub scratch: PathBuf,
    pub cgroup: Option<Delegation>,
    pub seccomp: Option<super::seccomp::Program>,
}

/// Why the keeper stopped waiting.
enum Stop {
    Exited(WaitStatus),
    TimedOut,
    KillRequested,
    WriteLimit,
}

impl Keeper {
    /// Run the sandbox and report how it ended. Returns the keeper's exit
    /// code: 0 once it has reported to the caller, which then removes the
    /// run's upper and work directories while this process (and with it
    /// the sandbox's namespaces) goes away. With the caller gone, the
    /// keeper removes the run directory itself and returns 1.
    pub fn main(mut self) -> i32 {
        let cgroup_path = self.cgroup.as_ref().map(|d| d.run_path(&self.id));
        let scratch = self.scratch.clone();
        let ended = self.setup_and_run(&scratch, cgroup_path.as_deref());
        kill_all_and_reap();
        let event = match ended {
            Ok((outcome, measured)) => Event::Finished {
                outcome,
                // Every process of the run is reaped, its cgroup not yet
                // removed: its counters are final.
                usage: usage::read(self.cgroup.as_ref(), cgroup_path.as_deref(), measured),
            },
            Err(e) => {
                let message = format!("{e:#}");
                let code = classify_error(&message);
                Event::Failed { message, code }
            }
        };
        if let (Some(d), Some(path)) = (&self.cgroup, &cgroup_path) {
            d.remove(path);
        }
        // No umount: the scratch tmpfs and the overlay go with this mount
        // namespace when the keeper exits, and each explicit umount waits
        // for an RCU grace period.
        if wire::send(&mut self.control, &event).is_ok() {
            return 0;
        }
        // Nobody will clean up after us: leave nothing.
        let _ = remove_tree(&self.rundir);
        1
    }

    fn setup_and_run(
        &mut self,
        scratch: &Path,
        cgroup_path: Option<&Path>,
    ) -> Result<(Outcome, Measured)> {
        let setup = Instant::now();
        make_mounts_private()?;
        if self.run.network != Network::Host {
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
            pids: self.cgroup.as_ref().is_some_and(Delegation::has_pids),
        });
        let hard = spec::HardLimits::current();
        let resolv_conf = bundle.join("resolv.conf");
        let mut network_wait = std::time::Duration::ZERO;
        let resolv_conf = if self.run.network == Network::Pasta {
            fs::write(&resolv_conf, super::pasta::resolv_conf())
                .context("writing the run's resolv.conf")?;
            // The caller starts pasta while we mount: the program must not
            // start before its network is there.
            let waiting = Instant::now();
            self.wait_network()?;
            network_wait = waiting.elapsed();
            Some(resolv_conf.as_path())
        } else {
            None
        };
        let config = spec::build(&self.run, rootfs, cg.as_ref(), &hard, resolv_conf);
        fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)
            .context("writing config.json")?;

        tracing::debug!("rootfs mounted, config.json written");
        let started = Instant::now();
        // With network, the wait for pasta is the caller's, not the mounts'.
        let mounts = started.duration_since(setup).saturating_sub(network_wait);
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
        // The baseline of what it writes, before the program writes.
        let (upper, _) = super::rundir::layout(&self.rundir);
        let mut watch = super::write_limit::Watch::start(&upper, &self.run);
        let mut sampler = PidsSampler::new(self.cgroup.as_ref(), cgroup_path);
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
        let times = KeeperTimes {
            mounts_us: micros(mounts),
            init_us: micros(started.elapsed()),
        };
        wire::send(
            &mut self.control,
            &Event::Started {
                pid: pid.as_raw(),
                times,
            },
        )?;

        let deadline = self.run.timeout.map(|t| started + t);
        let stop = self.wait(pid, deadline, &mut watch, sampler.as_mut())?;
        // The program is gone (or is to go): nothing else of the sandbox
        // may live on.
        kill_all_and_reap();
        let measured = Measured {
            wall: started.elapsed(),
            written: Some(watch.written()),
            sampled_pids: sampler.as_ref().map(PidsSampler::peak),
        };
        let status = match stop {
            Stop::Exited(status) => status,
            Stop::TimedOut => return Ok((Outcome::TimedOut, measured)),
            Stop::WriteLimit => return Ok((Outcome::WriteLimitExceeded, measured)),
            Stop::KillRequested => return Ok((Outcome::Killed, measured)),
        };
        // What it wrote last (a file stopped by RLIMIT_FSIZE, say).
        if watch.over() {
            return Ok((Outcome::WriteLimitExceeded, measured));
        }
        let ooms = match (&self.cgroup, cgroup_path) {
            (Some(d), Some(p)) => d.oom_kills(p),
            _ => 0,
        };
        // No `container.delete`: its state directory goes with the scratch
        // tmpfs, and the run's cgroup is removed by `main`.
        let outcome = match status {
            WaitStatus::Exited(_, code) if ooms > 0 && code != 0 => Outcome::OomKilled,
            WaitStatus::Signaled(_, Signal::SIGKILL, _) if ooms > 0 => Outcome::OomKilled,
            WaitStatus::Exited(_, code) => Outcome::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Outcome::Signaled(sig as i32),
            other => bail!("unexpected wait status of the program: {other:?}"),
        };
        Ok((outcome, measured))
    }

    fn mount_rootfs(&self, rootfs: &Path) -> Result<()> {
        let (upper, work) = super::rundir::layout(&self.rundir);
        let paths = super::upper_dirs::made_paths(&self.run);
        let scratch_dirs = super::upper_dirs::SCRATCH_DIRS.map(Path::new);
        super::upper_dirs::prepare(
            &upper,
            &self.run.layers,
            paths.iter().map(PathBuf::as_path).chain(scratch_dirs),
        );
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

    /// Wait until the caller says the network namespace is connected.
    fn wait_network(&mut self) -> Result<()> {
        loop {
            match wire::recv::<Command>(&mut self.reader)? {
                Some(Command::NetworkReady) => return Ok(()),
                Some(Command::Mapped) => continue,
                Some(Command::Kill) | None => {
                    bail!("stopped before the run's network was connected")
                }
            }
        }
    }

    /// Wait for the program's exit, the deadline, a kill request, or
    /// (measured when due) the write limit passed; sample the processes
    /// when due.
    fn wait(
        &mut self,
        pid: Pid,
        deadline: Option<Instant>,
        watch: &mut super::write_limit::Watch,
        mut sampler: Option<&mut PidsSampler>,
    ) -> Result<Stop> {
        let pidfd = pidfd_open(pid)?;
        let control = self.reader.get_ref().try_clone()?;
        loop {
            if watch.due().is_some_and(|d| d <= Instant::now()) && watch.over() {
                return Ok(Stop::WriteLimit);
            }
            if let Some(s) = sampler.as_deref_mut().filter(|s| s.due() <= Instant::now()) {
                s.sample();
            }
            let wake = [deadline, watch.due(), sampler.as_deref().map(|s| s.due())]
                .into_iter()
                .flatten()
                .min();
            let timeout = match wake {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() && deadline.is_some_and(|d| d <= Instant::now()) {
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
                    Ok(Some(Command::Mapped | Command::NetworkReady)) => continue,
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
pub fn mount_overlay(
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

fn dup_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: the caller starts the keeper with these fds open; we only
    // borrow them long enough to duplicate.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .with_context(|| format!("fd {fd} of the keeper"))
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
