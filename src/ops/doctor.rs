//! `compute-worker doctor`: every check the worker's host must pass, one row
//! each (ok / warn / fail / skip) with what was found and how to fix it.
//!
//! The checks reuse the code the worker runs: the id maps of
//! `sandbox::idmap`, a real overlay mount by the sandbox helper in a fresh
//! user namespace, `sandbox::cgroup`'s delegation test, the broker
//! connection of `broker::consumer`, the image references of rootfs-cache.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::broker::{BrokerUrl, ConsumerConfig};
use crate::config::codabench::Codabench;
use crate::sandbox::cgroup::Lookup;
use crate::sandbox::{self, cgroup, idmap, SandboxConfig};
use crate::units::human;

pub use super::check::{exit_code, table, Check, Status};

/// Who runs the worker and where it keeps things.
struct Host {
    user: String,
    uid: u32,
    root: bool,
    state_dir: PathBuf,
    image_dir: PathBuf,
    cgroup_parent: Option<PathBuf>,
    id_mode: crate::sandbox::IdModeSetting,
}

impl Host {
    fn setup_host_fix(&self) -> String {
        format!("as root: `compute-worker setup-host --user {}`", self.user)
    }
}

/// What the checks look at (`None`: the worker's defaults).
#[derive(Debug, Clone, Default)]
pub struct DoctorInput {
    pub state_dir: Option<PathBuf>,
    pub image_dir: Option<PathBuf>,
    pub cgroup_parent: Option<PathBuf>,
    /// An image jobs will use: its registry must answer.
    pub image: Option<String>,
    pub verify_broker_tls: bool,
    pub broker_ca_file: Option<PathBuf>,
    /// Where the GPU driver's files are (`/` but in tests).
    pub gpu_root: PathBuf,
    /// `COMPUTE_WORKER_NETWORK`: the network programs get.
    pub network: crate::sandbox::Network,
    /// `COMPUTE_WORKER_ID_MODE`.
    pub id_mode: crate::sandbox::IdModeSetting,
}

/// All checks, in the order an operator fixes them.
pub fn checks(args: &DoctorInput) -> Vec<Check> {
    let uid = nix::unistd::getuid().as_raw();
    let host = Host {
        user: idmap::user_name(uid).unwrap_or_else(|| uid.to_string()),
        uid,
        root: nix::unistd::geteuid().is_root(),
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(sandbox::default_state_dir),
        image_dir: args
            .image_dir
            .clone()
            .unwrap_or_else(crate::host::default_image_dir),
        cgroup_parent: args.cgroup_parent.clone(),
        id_mode: args.id_mode,
    };
    let mut out = vec![user(&host), user_namespaces(&host)];
    let mode = super::doctor_id_mode::mode(host.id_mode);
    out.push(super::doctor_id_mode::row(host.id_mode, mode, &host.user));
    if mode == Some(crate::sandbox::IdMode::Single) {
        out.extend(super::doctor_id_mode::not_needed());
    } else {
        out.extend(subordinate_ids(&host));
        out.extend(["newuidmap", "newgidmap"].map(|t| map_tool(&host, t)));
    }
    out.push(disk(
        "state dir",
        &host.state_dir,
        "COMPUTE_WORKER_STATE_DIR",
        &host,
    ));
    out.push(disk(
        "image dir",
        &host.image_dir,
        "COMPUTE_WORKER_IMAGE_DIR",
        &host,
    ));
    let codabench = Codabench::from_env();
    if let Ok(c) = &codabench {
        out.push(disk(
            "host directory",
            &c.host_directory,
            "HOST_DIRECTORY",
            &host,
        ));
        out.extend(super::doctor_codabench::rows(c));
    }
    let mut private = vec![
        (
            "image dir",
            "COMPUTE_WORKER_IMAGE_DIR",
            host.image_dir.as_path(),
        ),
        (
            "state dir",
            "COMPUTE_WORKER_STATE_DIR",
            host.state_dir.as_path(),
        ),
    ];
    if let Ok(c) = &codabench {
        private.push((
            "host directory",
            "HOST_DIRECTORY",
            c.host_directory.as_path(),
        ));
    }
    out.push(super::doctor_store::row(&private, host.uid, &host.user));
    out.push(overlay(&host, &out));
    out.push(super::network::check(
        args.network,
        codabench.as_ref().is_ok_and(|c| c.network_disabled),
    ));
    out.extend(cgroups(&host));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // lapin logs a refused login as errors of its own; the row says it.
    let quiet = tracing::Dispatch::none();
    out.push(tracing::dispatcher::with_default(&quiet, || {
        rt.block_on(broker(
            &codabench,
            args.verify_broker_tls,
            args.broker_ca_file.clone(),
        ))
    }));
    out.push(rt.block_on(registry(args.image.as_deref())));
    let use_gpu = codabench.as_ref().is_ok_and(|c| c.use_gpu);
    out.extend(gpu_rows(&args.gpu_root, use_gpu));
    out
}

fn user(h: &Host) -> Check {
    if h.root {
        return Check::warn(
            "user",
            "running as root: sandboxes would use root's id space",
            "run the worker as an ordinary user; prepare one with `compute-worker setup-host --user NAME`, then run doctor as that user",
        );
    }
    Check::ok("user", format!("{} (uid {})", h.user, h.uid))
}

fn read_sysctl(path: &str) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn user_namespaces(h: &Host) -> Check {
    const NAME: &str = "user namespaces";
    let max = read_sysctl("/proc/sys/user/max_user_namespaces");
    if max == Some(0) {
        return Check::fail(
            NAME,
            "user.max_user_namespaces is 0: user namespaces are disabled",
            "as root: `sysctl -w user.max_user_namespaces=28633` and put `user.max_user_namespaces=28633` in /etc/sysctl.d/90-compute-worker.conf",
        );
    }
    let mut detail = match max {
        Some(m) => format!("max_user_namespaces={m}"),
        None => "no /proc/sys/user/max_user_namespaces".to_string(),
    };
    // Debian's switch (older kernels) and Ubuntu's AppArmor restriction
    // (23.10 and later) only bind unprivileged users.
    let clone = read_sysctl("/proc/sys/kernel/unprivileged_userns_clone");
    if clone == Some(0) && !h.root {
        return Check::fail(
            NAME,
            "kernel.unprivileged_userns_clone is 0: unprivileged users cannot create user namespaces",
            "as root: `sysctl -w kernel.unprivileged_userns_clone=1` and put it in /etc/sysctl.d/90-compute-worker.conf",
        );
    }
    if let Some(v) = clone {
        detail += &format!(", unprivileged_userns_clone={v}");
    }
    let apparmor = read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    if apparmor == Some(1) && !h.root {
        return Check::fail(
            NAME,
            "kernel.apparmor_restrict_unprivileged_userns is 1: AppArmor strips the capabilities of unprivileged user namespaces (no mounts)",
            "as root: add an AppArmor profile for this binary with `userns,` (see README, Troubleshooting), or `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
        );
    }
    if let Some(v) = apparmor {
        detail += &format!(", apparmor_restrict_unprivileged_userns={v}");
    }
    Check::ok(NAME, detail)
}

fn subordinate_ids(h: &Host) -> Vec<Check> {
    [("subuid", "/etc/subuid"), ("subgid", "/etc/subgid")]
        .into_iter()
        .map(|(name, file)| match idmap::subordinate_range(Path::new(file), &h.user, h.uid) {
            Ok((start, count)) if count < 65536 => Check::warn(
                name,
                format!("{start}:{count} in {file}: fewer than 65536 ids, images with ids up to 65534 (nobody) will not unpack"),
                format!("give {} a range of 65536: {}", h.user, h.setup_host_fix()),
            ),
            Ok((start, count)) => {
                Check::ok(name, format!("{}:{start}:{count} in {file}", h.user))
            }
            // Real root maps the whole id space onto itself: no range needed.
            Err(_) if h.root => Check::ok(name, format!("root needs no range in {file}")),
            Err(e) => Check::fail(
                name,
                format!("{file} has no range for {} (uid {})", h.user, h.uid),
                match e {
                    idmap::IdMapError::Unreadable { .. } => format!("{e}; then {}", h.setup_host_fix()),
                    _ => h.setup_host_fix()
                        + &format!(" (or `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}`)", h.user),
                },
            ),
        })
        .collect()
}

/// The first `tool` on PATH.
fn find_on_path(tool: &str) -> Option<PathBuf> {
    which::which(tool).ok()
}

/// Whether `path` carries file capabilities (`security.capability`).
fn has_file_caps(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = c"security.capability";
    // SAFETY: both strings are NUL-terminated; a NULL buffer of size 0 asks
    // only for the attribute's size.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

fn map_tool(h: &Host, tool: &'static str) -> Check {
    let package = "as root: `apt-get install uidmap` (Debian/Ubuntu) or `dnf install shadow-utils`";
    let Some(path) = find_on_path(tool) else {
        if h.root {
            return Check::warn(
                tool,
                "not on PATH (root writes id maps itself; an ordinary user needs it)",
                package,
            );
        }
        return Check::fail(tool, "not on PATH", package);
    };
    let Ok(meta) = fs::metadata(&path) else {
        return Check::fail(tool, format!("cannot stat {}", path.display()), package);
    };
    let setuid_root = meta.mode() & libc::S_ISUID != 0 && meta.uid() == 0;
    if setuid_root {
        return Check::ok(tool, format!("{} (setuid root)", path.display()));
    }
    if has_file_caps(&path) {
        return Check::ok(tool, format!("{} (file capabilities)", path.display()));
    }
    let detail = format!(
        "{} is neither setuid root nor has file capabilities",
        path.display()
    );
    let fix = format!(
        "as root: `chown root {p} && chmod u+s {p}` (or `setcap cap_setuid+ep` / `cap_setgid+ep`), or reinstall the uidmap package",
        p = path.display()
    );
    if h.root {
        Check::warn(tool, detail, fix)
    } else {
        Check::fail(tool, detail, fix)
    }
}

/// The nearest existing ancestor of `p` (itself if it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

fn disk(name: &'static str, dir: &Path, var: &str, h: &Host) -> Check {
    use nix::unistd::{access, AccessFlags};
    const MIN_FREE: u64 = 1 << 30;
    const LOW_FREE: u64 = 10 << 30;
    let Some(existing) = existing_ancestor(dir) else {
        return Check::fail(
            name,
            format!("{} has no existing ancestor", dir.display()),
            format!("set {var} to a directory this user can write"),
        );
    };
    if access(existing, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        return Check::fail(
            name,
            format!("{} is not writable by {}", existing.display(), h.user),
            format!(
                "as root: `install -d -o {u} {d}`, or set {var} to a directory {u} owns ({})",
                h.setup_host_fix(),
                u = h.user,
                d = dir.display()
            ),
        );
    }
    let free = match nix::sys::statvfs::statvfs(existing) {
        Ok(s) => s.blocks_available() * s.fragment_size(),
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot measure free space in {}: {e}", existing.display()),
                format!("check that {} is a mounted local filesystem", dir.display()),
            )
        }
    };
    let detail = format!("{}: {} free", dir.display(), human(free));
    let fix = format!(
        "free space on that filesystem (`compute-worker prune`), or set {var} to a larger one"
    );
    if free < MIN_FREE {
        Check::fail(name, detail, fix)
    } else if free < LOW_FREE {
        Check::warn(name, detail + " (less than 10 GiB)", fix)
    } else {
        Check::ok(name, detail)
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Mount an overlay in a fresh user namespace, as every run does.
fn overlay(h: &Host, earlier: &[Check]) -> Check {
    const NAME: &str = "overlay in userns";
    let blocked = earlier.iter().find(|c| {
        c.status == Status::Fail
            && matches!(
                c.name,
                "user namespaces" | "subuid" | "subgid" | "newuidmap" | "newgidmap" | "state dir"
            )
    });
    if let Some(b) = blocked {
        return Check::skip(NAME, format!("needs `{}` fixed first", b.name));
    }
    let kernel = kernel_release();
    let fix = format!(
        "the kernel ({kernel}) must be Linux >= 5.11 with overlayfs (`modprobe overlay`), and {} must be on a local filesystem (ext4, xfs with d_type, btrfs, tmpfs), not NFS or another overlay",
        h.state_dir.display()
    );
    if let Err(e) = sandbox::rundir::create_private_dir(&h.state_dir) {
        return Check::fail(
            NAME,
            format!("cannot create {}: {e}", h.state_dir.display()),
            h.setup_host_fix(),
        );
    }
    let cfg = match SandboxConfig::for_current_user(h.state_dir.clone(), None, h.id_mode) {
        Ok(c) => c,
        Err(e) => return Check::fail(NAME, e.to_string(), h.setup_host_fix()),
    };
    match cfg.probe_overlay() {
        Ok(Ok(())) => Check::ok(
            NAME,
            format!(
                "mounted and wrote through an overlay in {} (kernel {kernel})",
                h.state_dir.display()
            ),
        ),
        Ok(Err(why)) => Check::fail(NAME, why, fix),
        Err(e) => Check::fail(
            NAME,
            format!("the user namespace could not be set up: {e}"),
            fix,
        ),
    }
}

fn cgroups(h: &Host) -> Vec<Check> {
    const NAME: &str = "cgroup";
    let version = cgroup::host_version();
    let kind = match version {
        cgroup::Version::V2 => "cgroup v2",
        cgroup::Version::V1 => "cgroup v1 (legacy or hybrid)",
    };
    let own = match version {
        cgroup::Version::V2 => cgroup::own_cgroup(),
        cgroup::Version::V1 => None,
    };
    let row = match cgroup::lookup(h.cgroup_parent.as_deref()) {
        Lookup::Found(c) => {
            let parent = c.parent.display();
            let how = match (c.version, c.configured, c.must_move) {
                (cgroup::Version::V1, ..) => format!("{parent} is delegated to {}", h.user),
                (_, false, _) => format!(
                    "runs go in this process's cgroup {parent}, delegated to {} (the worker \
                     moves into {parent}/{})",
                    h.user,
                    cgroup::LEAF
                ),
                (_, true, true) => format!(
                    "{parent} is delegated to {} and this process runs in it (the worker moves \
                     into {parent}/{})",
                    h.user,
                    cgroup::LEAF
                ),
                (_, true, false) => format!(
                    "{parent} is delegated to {}; this process runs in {}",
                    h.user,
                    c.own.as_deref().unwrap_or(Path::new("?")).display()
                ),
            };
            // The limits the run cgroups could not enforce: the message a
            // run asking for them would fail with.
            let all = sandbox::Limits {
                memory: Some(1),
                pids: Some(1),
                cpus: Some("0".into()),
                write_max: None,
            };
            let would_be = sandbox::Delegation {
                version: c.version,
                parent: c.parent.clone(),
                v1_masked: Vec::new(),
                controllers: c.available.clone(),
            };
            match would_be.check_limits(&all) {
                Ok(()) => Check::ok(
                    NAME,
                    format!(
                        "{kind}; {how}; controllers: {} (limits on)",
                        c.available.join(" ")
                    ),
                ),
                Err(missing) => Check::warn(
                    NAME,
                    format!(
                        "{kind}; {how}; but it lacks the `{}` controller (it has: {}): runs \
                         asking for {} fail",
                        missing.controller, missing.have, missing.what
                    ),
                    missing.fix,
                ),
            }
        }
        Lookup::Absent(why) => {
            let fix = match version {
                cgroup::Version::V1 => format!(
                    "{}, then set COMPUTE_WORKER_CGROUP_PARENT=/compute-worker",
                    h.setup_host_fix()
                ),
                cgroup::Version::V2 => "run the worker as the user service of `compute-worker \
                     install-service` (Delegate=yes gives it a cgroup of its own), or under \
                     `systemd-run --user --scope -p Delegate=yes compute-worker ...`; \
                     `systemd-run --user --scope -p Delegate=yes compute-worker doctor` shows \
                     what it gets there"
                    .to_string(),
            };
            Check::warn(
                NAME,
                format!("{kind}; {why}: memory, pids and cpu limits are OFF"),
                fix,
            )
        }
        Lookup::Unusable(why) => {
            let parent = h
                .cgroup_parent
                .as_deref()
                .map_or_else(|| "-".into(), |p| p.display().to_string());
            let fix = match version {
                cgroup::Version::V1 => format!(
                    "{} --cgroup-parent {parent}, or unset COMPUTE_WORKER_CGROUP_PARENT to run \
                     without limits",
                    h.setup_host_fix()
                ),
                cgroup::Version::V2 => "see the detail; or unset COMPUTE_WORKER_CGROUP_PARENT \
                     and run the worker as the user service of `compute-worker \
                     install-service` (Delegate=yes)"
                    .to_string(),
            };
            let place = own
                .as_ref()
                .map(|o| format!(" (this process is in {})", o.display()))
                .unwrap_or_default();
            Check::fail(
                NAME,
                format!(
                    "{kind}; cgroup subtree {parent} is not usable{place}: {why} (limits would \
                     be OFF)"
                ),
                fix,
            )
        }
    };
    let mut out = vec![row];
    if version == cgroup::Version::V2 && !h.root {
        out.push(systemd_delegation(h));
    }
    out
}

/// cgroup v2: which controllers systemd delegates to the user's manager.
fn systemd_delegation(h: &Host) -> Check {
    const NAME: &str = "systemd delegation";
    let dir = format!(
        "/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service",
        uid = h.uid
    );
    let Ok(text) = fs::read_to_string(format!("{dir}/cgroup.controllers")) else {
        return Check::skip(
            NAME,
            format!("no {dir}: no systemd user manager for {}", h.user),
        );
    };
    let have: Vec<&str> = text.split_whitespace().collect();
    let missing: Vec<&str> = ["cpu", "cpuset", "io", "memory", "pids"]
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    if missing.is_empty() {
        Check::ok(
            NAME,
            format!("user@{}.service has {}", h.uid, have.join(" ")),
        )
    } else {
        Check::warn(
            NAME,
            format!(
                "user@{}.service lacks {} (has: {})",
                h.uid,
                missing.join(" "),
                have.join(" ")
            ),
            format!(
                "{} (writes /etc/systemd/system/user@.service.d/delegate.conf); it applies \
                 once user@{uid}.service restarts (`systemctl restart user@{uid}.service`, or \
                 a reboot)",
                h.setup_host_fix(),
                uid = h.uid
            ),
        )
    }
}

/// A real AMQP connection with `BROKER_URL` / `BROKER_USE_SSL`, as `serve`
/// makes it.
async fn broker(
    codabench: &anyhow::Result<Codabench>,
    verify_tls: bool,
    ca_file: Option<std::path::PathBuf>,
) -> Check {
    const NAME: &str = "broker";
    let set_url = "set BROKER_URL=pyamqp://USER:PASSWORD@HOST:5672/VHOST in the environment, in .env (`--env-file`) or as broker_url in the config file; Codabench shows it on the queue's page";
    let codabench = match codabench {
        Ok(c) => c,
        Err(e) => return Check::fail(NAME, format!("{e:#}"), set_url),
    };
    let Some(raw) = &codabench.broker_url else {
        return Check::fail(NAME, "BROKER_URL is not set", set_url);
    };
    let verify_tls = verify_tls || ca_file.is_some();
    let url = match BrokerUrl::parse(raw, codabench.broker_use_ssl, verify_tls) {
        Ok(u) => u,
        Err(e) => return Check::fail(NAME, e.to_string(), set_url),
    };
    let mut cfg = ConsumerConfig::new(url.clone());
    cfg.connection_name = format!("compute-worker-doctor:{}", std::process::id());
    cfg.tls_ca_file = ca_file;
    let connect = crate::broker::connect::connect(&cfg);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "doctor done").await;
            Check::ok(NAME, format!("connected to {url}"))
        }
        Ok(Err(e)) => {
            let text = e.to_string();
            Check::fail(NAME, text.clone(), broker_fix(&text, &url))
        }
        Err(_) => Check::fail(
            NAME,
            format!("no answer from {url} within 10 s"),
            broker_fix("timed out", &url),
        ),
    }
}

/// What to do about a broker connection error, from its message.
fn broker_fix(error: &str, url: &BrokerUrl) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("access_refused") || e.contains("auth") || e.contains("login") {
        format!(
            "the user `{}` or its password in BROKER_URL is wrong: copy the broker URL again from the queue's page in Codabench",
            url.username
        )
    } else if e.contains("vhost") || e.contains("not_allowed") {
        format!(
            "the virtual host `{}` does not exist or `{}` may not use it: check the path part of BROKER_URL",
            url.vhost, url.username
        )
    } else if e.contains("certificate verification failed") {
        "give the CA that signed the broker's certificate with --broker-ca-file (COMPUTE_WORKER_BROKER_CA_FILE), or drop --verify-broker-tls (Codabench's worker does not verify)".to_string()
    } else if e.contains("broker ca file") {
        "--broker-ca-file (COMPUTE_WORKER_BROKER_CA_FILE) must be a readable PEM file with the certificate of the CA that signed the broker's".to_string()
    } else if e.contains("tls") || e.contains("certificate") || e.contains("handshake") {
        "TLS failed: check BROKER_USE_SSL (codabench.org needs it set) and the port".to_string()
    } else {
        format!(
            "check that {}:{} is reachable from this host (firewall, DNS) and whether the broker wants TLS (BROKER_USE_SSL)",
            url.host, url.port
        )
    }
}

/// Whether the registry of `image` (or the default search registry)
/// answers at all. Never a failure: cached and imported images still run.
async fn registry(image: Option<&str>) -> Check {
    const NAME: &str = "registry";
    let conf =
        match rootfs_cache::RegistriesConf::load(&rootfs_cache::RegistriesConf::default_paths()) {
            Ok(c) => c,
            Err(e) => {
                return Check::fail(NAME, e.to_string(), "fix or remove that registries.conf")
            }
        };
    let reference = image.unwrap_or("busybox");
    let r = match conf.resolve(reference) {
        Ok(mut v) if !v.is_empty() => v.remove(0),
        Ok(_) => return Check::skip(NAME, "no registry to check"),
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "give --image a reference like python:3.12 or registry:5000/team/img",
            )
        }
    };
    let what = match image {
        Some(i) => format!("{} (for {i})", r.registry),
        None => format!("{} (default search registry)", r.registry),
    };
    if conf.is_blocked(&r) {
        return Check::warn(
            NAME,
            format!("{what} is blocked in registries.conf"),
            "unblock it in registries.conf, or import images with `compute-worker import`",
        );
    }
    let host = match r.registry.as_str() {
        rootfs_cache::reference::DOCKER_HUB => "registry-1.docker.io",
        other => other,
    };
    let scheme = if conf.is_insecure(&r) {
        "http"
    } else {
        "https"
    };
    let endpoint = format!("{scheme}://{host}/v2/");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Check::warn(NAME, e.to_string(), "retry"),
    };
    match client.get(&endpoint).send().await {
        // 401 is the normal answer of a registry that wants a token.
        Ok(resp) => Check::ok(
            NAME,
            format!("{what} answers ({} {endpoint})", resp.status().as_u16()),
        ),
        Err(e) => Check::warn(
            NAME,
            format!("{what} did not answer: {e}"),
            "pulls will fail: check network, DNS and HTTPS_PROXY; on offline hosts import images with `compute-worker import` (cached images still run)",
        ),
    }
}

/// The driver, its GPUs and the device nodes (`gpu::host_report`). A
/// problem fails the check when jobs want GPUs (`USE_GPU=true`) and only
/// warns otherwise.
fn gpu_rows(root: &Path, wanted: bool) -> Vec<Check> {
    use crate::gpu::discovery::NoGpus;
    let report = crate::gpu::host_report(root);
    let problem = |name: &'static str, detail: String, fix: String| {
        if wanted {
            Check::fail(name, detail, fix)
        } else {
            Check::warn(name, detail, fix)
        }
    };
    let driver = match &report.driver {
        Ok(inv) => {
            let gpus: Vec<String> = inv.gpus.iter().map(|g| g.describe()).collect();
            Check::ok(
                "gpu driver",
                format!(
                    "NVIDIA {}{}: {}",
                    inv.driver_version,
                    inv.cuda_version
                        .as_deref()
                        .map(|c| format!(", CUDA {c}"))
                        .unwrap_or_default(),
                    gpus.join("; ")
                ),
            )
        }
        Err(e @ NoGpus::NoDriver(_)) if !wanted => {
            Check::skip("gpu driver", format!("{e} (CPU jobs only)"))
        }
        Err(e) => problem(
            "gpu driver",
            e.to_string(),
            "install the NVIDIA driver and load its modules until `nvidia-smi` works, or unset USE_GPU".into(),
        ),
    };
    let mut rows = vec![driver];
    if report.driver.is_ok() {
        rows.push(if report.ok() {
            Check::ok(
                "gpu devices",
                format!("{} device nodes usable read-write", report.nodes.len()),
            )
        } else {
            problem(
                "gpu devices",
                format!("{} problem(s)", report.problems.len()),
                report.problems.join("; "),
            )
        });
    }
    rows
}
// ---------------------------------------------------------------------------
