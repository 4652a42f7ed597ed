//! Test environment for the sandbox: the real `compute-worker` binary run
//! as an unprivileged user (with subordinate ids) on a rootfs built from
//! Debian's busybox-static.
//!
//! As root the tests switch to `$COMPUTE_WORKER_TEST_USER` (default
//! `cwtest`, created by scripts/dev-setup.sh); as any other user they run
//! as that user. [`env_noids`] is the same for a user with no subordinate
//! ids (`$COMPUTE_WORKER_TEST_NOIDS_USER`, default `cwnoids`; as root only).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use test_support::build_busybox_rootfs;

pub struct Env {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// First subordinate uid of the user (0 for a user without a range).
    pub subuid_start: u32,
    pub subuid_count: u32,
    /// Copy of the binary where the user can execute it.
    pub bin: PathBuf,
    /// busybox rootfs owned by the user.
    pub rootfs: PathBuf,
    /// Scratch directory owned by the user.
    pub work: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_parent: String,
    pub as_root: bool,
}

static ENV: OnceLock<Env> = OnceLock::new();
static ENV_NOIDS: OnceLock<Env> = OnceLock::new();

/// The test user, with subordinate ids.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let as_root = nix::unistd::geteuid().is_root();
        let user = if as_root {
            std::env::var("COMPUTE_WORKER_TEST_USER").unwrap_or_else(|_| "cwtest".into())
        } else {
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout)
                .trim()
                .to_string()
        };
        setup(user, Ids::Ranges, "")
    })
}

/// The test user without subordinate ids (single-id mode).
pub fn env_noids() -> &'static Env {
    ENV_NOIDS.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the tests of single-id mode switch to a user without subordinate ids: run them as root"
        );
        let user =
            std::env::var("COMPUTE_WORKER_TEST_NOIDS_USER").unwrap_or_else(|_| "cwnoids".into());
        setup(user, Ids::None, "noids-")
    })
}

/// Whether the test user has subordinate ids.
#[derive(PartialEq)]
enum Ids {
    Ranges,
    None,
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(user).output().unwrap();
    assert!(
        out.status.success(),
        "test user `{user}` does not exist: run `sudo scripts/dev-setup.sh` first"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn subuid_range(user: &str) -> (u32, u32) {
    let text = fs::read_to_string("/etc/subuid").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut it = l.split(':');
            (it.next()? == user).then(|| {
                let start = it.next()?.parse().ok()?;
                let count = it.next()?.parse().ok()?;
                Some((start, count))
            })?
        })
        .unwrap_or_else(|| {
            panic!("no /etc/subuid range for `{user}`: run `sudo scripts/dev-setup.sh`")
        })
}

fn setup(user: String, ids: Ids, tag: &str) -> Env {
    let as_root = nix::unistd::geteuid().is_root();
    let uid = id_of(&user, "-u");
    let gid = id_of(&user, "-g");
    let (subuid_start, subuid_count) = match ids {
        Ids::Ranges => subuid_range(&user),
        Ids::None => {
            for f in ["/etc/subuid", "/etc/subgid"] {
                let text = fs::read_to_string(f).unwrap_or_default();
                assert!(
                    !text.lines().any(|l| [user.as_str(), &uid.to_string()]
                        .contains(&l.split(':').next().unwrap_or(""))),
                    "`{user}` must have no range in {f}: run `sudo scripts/dev-setup.sh`"
                );
            }
            (0, 0)
        }
    };

    remove_dead_work_dirs();
    let work = std::env::temp_dir().join(format!("cw-sandbox-tests-{tag}{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let bin = work.join("compute-worker");
    fs::copy(env!("CARGO_BIN_EXE_compute-worker"), &bin).unwrap();
    let rootfs = work.join("rootfs");
    build_busybox_rootfs(&rootfs);
    let state_dir = work.join("state");
    fs::create_dir_all(&state_dir).unwrap();
    if as_root {
        chown_tree(&work, uid, gid);
    }
    Env {
        user,
        uid,
        gid,
        subuid_start,
        subuid_count,
        bin,
        rootfs,
        work,
        state_dir,
        cgroup_parent: std::env::var("COMPUTE_WORKER_TEST_CGROUP")
            .unwrap_or_else(|_| "/cw-test".into()),
        as_root,
    }
}

/// The work directories of earlier test processes that are gone (each
/// holds a copy of the binary and a rootfs: they would fill the disk).
fn remove_dead_work_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cw-sandbox-tests-"))
            .map(|n| n.strip_prefix("noids-").unwrap_or(n))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// A directory owned by the test user (mode `mode`) under the work dir.
pub fn user_dir(name: &str, mode: u32) -> PathBuf {
    env().dir(name, mode)
}

/// `compute-worker run` of a local competition written under the test
/// user's directory `name`: an ingestion program that runs the shell
/// lines `ingest`, then writes the predictions; a submission; a scoring
/// program that runs `score`, then writes `scores.json`. Busybox rootfs,
/// `--network none`, results in `<dir>/results`, then `extra` arguments.
pub fn local_run(name: &str, ingest: &str, score: &str, extra: &[&str]) -> (Command, PathBuf) {
    let dir = user_files(
        name,
        &[
            (
                "ingestion/metadata.yaml",
                "command: sh $ingestion_program/ingest.sh $output\n".to_string(),
            ),
            (
                "ingestion/ingest.sh",
                format!("{ingest}\necho 1 > \"$1/predictions.txt\"\n"),
            ),
            ("submission/predict.sh", "echo 1\n".to_string()),
            (
                "scoring/metadata.yaml",
                "command: sh /app/program/score.sh /app/output\n".to_string(),
            ),
            (
                "scoring/score.sh",
                format!("{score}\necho '{{\"score\": 1}}' > \"$1/scores.json\"\n"),
            ),
        ],
    );
    let arg = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let e = env();
    let rootfs = e.rootfs.to_string_lossy().into_owned();
    let mut args = vec![
        "run".to_string(),
        "--rootfs".into(),
        rootfs,
        "--submission".into(),
        arg("submission"),
        "--ingestion-program".into(),
        arg("ingestion"),
        "--scoring-program".into(),
        arg("scoring"),
        "--results".into(),
        arg("results"),
        "--network".into(),
        "none".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = e.command(&args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    (cmd, dir)
}

/// `files` (relative path, text) written under the test user's directory
/// `name`, all owned by that user.
pub fn user_files(name: &str, files: &[(&str, String)]) -> PathBuf {
    let e = env();
    let dir = user_dir(name, 0o755);
    for (path, text) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
    }
    chown_tree(&dir, e.uid, e.gid);
    dir
}

impl Env {
    /// A directory owned by this user (mode `mode`) under its work dir.
    pub fn dir(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.work.join(name);
        fs::create_dir_all(&d).unwrap();
        if self.as_root {
            chown(&d, Some(self.uid), Some(self.gid)).unwrap();
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    /// `compute-worker ARGS` as the test user.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(&self.bin, args)
    }

    /// `BIN ARGS` as the test user, with the environment of [`Env::command`]
    /// (`bin` must be a build of compute-worker the user can execute).
    pub fn command_of(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = if self.as_root {
            // By its path: a test may give the command a $PATH of its own.
            let mut c = Command::new(which::which("setpriv").expect("setpriv (util-linux)"));
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .arg("--init-groups")
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(args)
            .current_dir(&self.work)
            .env("HOME", &self.work)
            .env("COMPUTE_WORKER_STATE_DIR", &self.state_dir)
            .env_remove("COMPUTE_WORKER_CGROUP_PARENT")
            .env_remove("COMPUTE_WORKER_IMAGE_DIR")
            .env_remove("COMPUTE_WORKER_IMAGE_CACHE_MAX")
            .stdin(Stdio::null());
        cmd
    }

    /// `compute-worker ARGS` as the test user, with the image cache in
    /// `image_dir`.
    pub fn images_command(&self, image_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(args);
        cmd.env("COMPUTE_WORKER_IMAGE_DIR", image_dir);
        cmd
    }

    /// Run `compute-worker ARGS` with the image cache in `image_dir`.
    pub fn images_run(&self, image_dir: &Path, args: &[&str]) -> Run {
        Run(self.images_command(image_dir, args).output().unwrap())
    }

    /// `compute-worker exec [OPTS] --rootfs <busybox> -- CMD...`
    pub fn exec_cmd(&self, opts: &[&str], cmd: &[&str]) -> Command {
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let mut args = vec!["exec"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--rootfs", &rootfs, "--"]);
        args.extend_from_slice(cmd);
        self.command(&args)
    }

    pub fn exec(&self, opts: &[&str], cmd: &[&str]) -> Run {
        Run(self.exec_cmd(opts, cmd).output().unwrap())
    }

    /// `sh -c SCRIPT` in a default sandbox.
    pub fn sh(&self, script: &str) -> Run {
        self.exec(&[], &["sh", "-c", script])
    }

    /// `exec` in the delegated cgroup subtree with `limits` (e.g. `--pids 40`).
    pub fn exec_limited(&self, limits: &[&str], cmd: &[&str]) -> Run {
        let cg = self.cgroup_opts();
        let opts: Vec<&str> = cg
            .iter()
            .map(String::as_str)
            .chain(limits.iter().copied())
            .collect();
        self.exec(&opts, cmd)
    }

    /// Options that put the run in the delegated cgroup subtree.
    pub fn cgroup_opts(&self) -> Vec<String> {
        vec!["--cgroup-parent".into(), self.cgroup_parent.clone()]
    }
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    #[track_caller]
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
}

/// Host processes whose command line starts with `needle`.
pub fn host_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Host processes whose user namespace is `ns` (as `/proc/PID/ns/user`
/// reads: `user:[N]`).
pub fn processes_in_user_namespace(ns: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|p| {
            fs::read_link(p.path().join("ns/user")).is_ok_and(|l| l.to_string_lossy() == ns)
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Host pid of the process whose command line contains `needle`.
pub fn wait_for_process(needle: &str) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(p) = host_processes(needle).first() {
            return p.split(':').next().unwrap().parse().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{needle} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `compute-worker doctor --json`'s rows by name: (status, detail, fix).
pub fn doctor_rows(out: &Output) -> std::collections::HashMap<String, (String, String, String)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("name"), (s("status"), s("detail"), s("fix")))
        })
        .collect()
}
