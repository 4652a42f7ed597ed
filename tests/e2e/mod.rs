//! A `compute-worker serve` process as the unprivileged test user, the
//! fake Codabench site it reports to, and tasks published as the site does:
//! shared by tests/serve.rs and bench/e2e_latency.rs.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sandbox_env::{self, env, user_dir, Env};
use crate::support;
use crate::support::amqp::broker_url;
use crate::support::site::{FakeSite, SiteVersion};
use test_support::{busybox_rootfs_layer, write_oci_layout, Comp, TestImage};

pub const IMAGE: &str = "localhost/cw-e2e/busybox:1";

/// A worker consuming `queue`, with an image cache holding [`IMAGE`].
pub struct Serve {
    pub child: Child,
    pub stderr_path: PathBuf,
    pub host_dir: PathBuf,
}

impl Serve {
    pub fn start(name: &str, queue: &str) -> Serve {
        Self::start_with(name, queue, &[])
    }

    pub fn start_with(name: &str, queue: &str, vars: &[(&str, &str)]) -> Serve {
        Self::start_as(env(), name, queue, vars)
    }

    /// [`Serve::start_with`] as the user of `e`.
    pub fn start_as(e: &'static Env, name: &str, queue: &str, vars: &[(&str, &str)]) -> Serve {
        let base = e.dir(name, 0o755);
        let images = base.join("images");
        // The competition image, imported offline into this worker's cache.
        let layout = base.join("layout");
        // Like a competition image, but running as a non-root user: the
        // writable /app directories must still work.
        let image = TestImage::with_config(
            vec![busybox_rootfs_layer(Comp::Gzip)],
            "amd64",
            json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "User": "33:33"}),
        );
        write_oci_layout(&layout, &image, "1");
        sandbox_env::chown_tree(&layout, e.uid, e.gid);
        let layout_s = layout.to_string_lossy().into_owned();
        e.images_run(&images, &["import", &layout_s, "--name", IMAGE])
            .ok();
        Self::start_on_as(e, name, queue, &images, vars)
    }

    /// A worker whose image cache is `images` (filled by the caller).
    pub fn start_on(name: &str, queue: &str, images: &Path, vars: &[(&str, &str)]) -> Serve {
        Self::start_on_as(env(), name, queue, images, vars)
    }

    /// [`Serve::start_on`] as the user of `e`.
    pub fn start_on_as(
        e: &'static Env,
        name: &str,
        queue: &str,
        images: &Path,
        vars: &[(&str, &str)],
    ) -> Serve {
        let base = e.dir(name, 0o755);
        let host_dir = base.join("host");
        let stderr_path = base.join("serve.log");
        let log = fs::File::create(&stderr_path).unwrap();
        let child = e
            .images_command(images, &["serve"])
            .env("BROKER_URL", broker_url())
            .env("COMPUTE_WORKER_QUEUE", queue)
            .env("HOST_DIRECTORY", &host_dir)
            .env("COMPUTE_WORKER_LOG", "info")
            .env(
                "CODALAB_IGNORE_CLEANUP_STEP",
                std::env::var("KEEP").unwrap_or_default(),
            )
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Serve {
            child,
            stderr_path,
            host_dir,
        }
    }

    /// Wait until a process whose command line starts with `needle` runs
    /// (a job's program), failing with the worker's log after 60 s.
    pub async fn wait_for_process(&self, needle: &str) {
        let t = Instant::now();
        while sandbox_env::host_processes(needle).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{needle} never started:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{status:?}\n{}", self.log());
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
    }

    /// The worker's exit status, failing with its log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("serve did not stop within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Zip of the demo competition's `dir` (the bundle the site would serve).
pub fn demo_zip(dir: &str) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo").join(dir);
    zip_of(&src)
}

pub fn zip_of(dir: &Path) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    compute_worker::job::bundle::zip_dir_contents(dir, out.path()).unwrap();
    fs::read(out.path()).unwrap()
}

/// Publish one `compute_worker_run` with the real Celery, as the site does.
pub fn publish(queue: &str, run_args: &Value) -> String {
    publish_with_soft_limit(queue, run_args, 1800)
}

/// `publish`, with Celery's soft time limit (`timelimit[1]`) in seconds.
pub fn publish_with_soft_limit(queue: &str, run_args: &Value, soft_limit: u64) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/celery_tool.py");
    let python = std::env::var("CELERY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(script)
        .args([
            "publish",
            queue,
            &run_args.to_string(),
            &soft_limit.to_string(),
            "0",
            support::site::SECRET,
        ])
        .env("BROKER_URL", broker_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "celery publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn revoke(task_id: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/celery_tool.py");
    let python = std::env::var("CELERY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(script)
        .args(["revoke", task_id])
        .env("BROKER_URL", broker_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "celery revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run args of a prediction step as a v1.26 site sends them.
pub fn prediction_args(site: &FakeSite, image: &str, limit: u64) -> Value {
    site.task(SiteVersion::V126, false, image, limit)
}

/// Run args of a scoring step as a v1.26 site sends them.
pub fn scoring_args(site: &FakeSite, image: &str) -> Value {
    site.task(SiteVersion::V126, true, image, 60)
}

pub async fn demo_site(id: u64) -> FakeSite {
    let site = FakeSite::start(id, 7).await;
    for (key, dir) in [
        ("submission.zip", "submission"),
        ("ingestion_program.zip", "ingestion_program"),
        ("input_data.zip", "input_data"),
        ("reference_data.zip", "reference_data"),
        ("scoring_program.zip", "scoring_program"),
    ] {
        site.add_bundle(key, demo_zip(dir));
    }
    site
}

/// Wait until the site has seen `status` (or a final Failed).
pub async fn wait_for_status(
    site: &FakeSite,
    serve: &Serve,
    status: &str,
    secs: u64,
) -> Vec<String> {
    let t = Instant::now();
    loop {
        let st = site.statuses();
        if st.iter().any(|s| s == status) || st.iter().any(|s| s == "Failed") {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "no {status} after {secs} s; statuses {st:?}\nworker log:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn zip_names(bytes: &[u8]) -> Vec<String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_string())
        .collect()
}

pub fn zip_file(bytes: &[u8], name: &str) -> String {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut s = String::new();
    z.by_name(name).unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Publish a task directly with lapin, in Celery's format (the headers of a
/// captured Celery 5.6 message, a fresh id): no Python process start, for
/// latency measurements.
pub async fn publish_fast(conn: &lapin::Connection, queue: &str, run_args: &Value) -> String {
    // Declare the queue as Celery does before publishing: a message to a
    // queue nobody declared yet would be dropped.
    let ch = conn.create_channel().await.unwrap();
    compute_worker::broker::connect::declare_topology(&ch, queue)
        .await
        .unwrap();
    let _ = ch.close(200, "ok").await;
    let mut c = support::amqp::fixture("celery5-prediction");
    let id = uuid::Uuid::new_v4().to_string();
    c.headers.insert("id".into(), Value::String(id.clone()));
    c.headers
        .insert("root_id".into(), Value::String(id.clone()));
    c.properties["correlation_id"] = Value::String(id.clone());
    let body = json!([[run_args], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    support::amqp::publish_raw(
        conn,
        "",
        queue,
        &c.headers,
        &c.properties,
        body.to_string().as_bytes(),
    )
    .await;
    id
}

/// Run args of a prediction step whose only bundle is a submission running
/// `command` (from its `metadata`), with no ingestion program.
/// Publish a prediction whose program sleeps `secs` (a number unique to
/// the test, so that its process can be found) and then writes a
/// prediction; return once the program runs.
pub async fn publish_sleeper(serve: &Serve, queue: &str, site: &FakeSite, name: &str, secs: &str) {
    let command = format!("sh -c 'sleep {secs}; echo odd > /app/output/predictions.txt'");
    publish(queue, &submission_only_args(site, name, &command, 60));
    serve.wait_for_process(&format!("sleep {secs}")).await;
}

pub fn submission_only_args(site: &FakeSite, name: &str, command: &str, limit: u64) -> Value {
    let sub = user_dir(name, 0o755);
    fs::write(sub.join("metadata"), format!("command: {command}\n")).unwrap();
    site.add_bundle("submission.zip", zip_of(&sub));
    let mut args = prediction_args(site, IMAGE, limit);
    for key in ["ingestion_program", "input_data"] {
        args.as_object_mut().unwrap().remove(key);
    }
    args
}
