//! `compute-worker serve` end to end: tasks published by the real Celery
//! through the real RabbitMQ, jobs run in real rootless sandboxes as the
//! unprivileged test user, reports to a fake Codabench site that checks
//! what the real one checks.

mod sandbox_env;
mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use sandbox_env::{env, host_processes, user_dir};
use support::amqp::{broker_url, unique_queue};
use support::site::FakeSite;
use test_support::{busybox_rootfs_layer, write_oci_layout, Comp, TestImage};

const IMAGE: &str = "localhost/cw-e2e/busybox:1";

/// A worker consuming `queue`, with an image cache holding [`IMAGE`].
struct Serve {
    child: Child,
    stderr_path: PathBuf,
    host_dir: PathBuf,
}

impl Serve {
    fn start(name: &str, queue: &str) -> Serve {
        Self::start_with(name, queue, &[])
    }

    fn start_with(name: &str, queue: &str, vars: &[(&str, &str)]) -> Serve {
        let e = env();
        let base = user_dir(name, 0o755);
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

        let host_dir = base.join("host");
        let stderr_path = base.join("serve.log");
        let log = fs::File::create(&stderr_path).unwrap();
        let child = e
            .images_command(&images, &["serve"])
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

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("serve did not stop on SIGTERM:\n{}", self.log());
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
fn demo_zip(dir: &str) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo").join(dir);
    zip_of(&src)
}

fn zip_of(dir: &Path) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    compute_worker::job::bundle::zip_dir_contents(dir, out.path()).unwrap();
    fs::read(out.path()).unwrap()
}

/// Publish one `compute_worker_run` with the real Celery, as the site does.
fn publish(queue: &str, run_args: &Value) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/celery_tool.py");
    let python = std::env::var("CELERY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(script)
        .args([
            "publish",
            queue,
            &run_args.to_string(),
            "1800",
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

fn revoke(task_id: &str) {
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

/// Run args of a prediction step with every bundle on `site`.
fn prediction_args(site: &FakeSite, image: &str, limit: u64) -> Value {
    json!({
        "user_pk": site.user_pk,
        "submissions_api_url": site.api_url(),
        "secret": support::site::SECRET,
        "docker_image": image,
        "execution_time_limit": limit,
        "id": site.submission_id,
        "is_scoring": false,
        "prediction_result": site.put_url("prediction_result.zip", "application/zip"),
        "ingestion_program": site.get_url("ingestion_program.zip"),
        "input_data": site.get_url("input_data.zip"),
        "ingestion_only_during_scoring": false,
        "program_data": site.get_url("submission.zip"),
        "prediction_stdout": site.put_url("prediction_stdout.txt", "application/zip"),
        "prediction_stderr": site.put_url("prediction_stderr.txt", "application/zip"),
        "prediction_ingestion_stdout": site.put_url("prediction_ingestion_stdout.txt", "application/zip"),
        "prediction_ingestion_stderr": site.put_url("prediction_ingestion_stderr.txt", "application/zip"),
    })
}

fn scoring_args(site: &FakeSite, image: &str) -> Value {
    json!({
        "user_pk": site.user_pk,
        "submissions_api_url": site.api_url(),
        "secret": support::site::SECRET,
        "docker_image": image,
        "execution_time_limit": 60,
        "id": site.submission_id,
        "is_scoring": true,
        "detailed_results_url": site.put_url("detailed_results.html", "text/html"),
        "prediction_result": site.get_url("prediction_result.zip"),
        "scoring_result": site.put_url("scoring_result.zip", "application/zip"),
        "reference_data": site.get_url("reference_data.zip"),
        "ingestion_only_during_scoring": false,
        "program_data": site.get_url("scoring_program.zip"),
        "scoring_stdout": site.put_url("scoring_stdout.txt", "application/zip"),
        "scoring_stderr": site.put_url("scoring_stderr.txt", "application/zip"),
        "scoring_ingestion_stdout": site.put_url("scoring_ingestion_stdout.txt", "application/zip"),
        "scoring_ingestion_stderr": site.put_url("scoring_ingestion_stderr.txt", "application/zip"),
    })
}

async fn demo_site(id: u64) -> FakeSite {
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
async fn wait_for_status(site: &FakeSite, serve: &Serve, status: &str, secs: u64) -> Vec<String> {
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

fn zip_names(bytes: &[u8]) -> Vec<String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_string())
        .collect()
}

fn zip_file(bytes: &[u8], name: &str) -> String {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut s = String::new();
    z.by_name(name).unwrap().read_to_string(&mut s).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_goes_through_prediction_and_scoring() {
    let queue = unique_queue("e2e-ok");
    let serve = Serve::start("serve-ok", &queue);
    let site = demo_site(501).await;

    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(
        st,
        ["Running", "Preparing", "Scoring"],
        "log:\n{}",
        serve.log()
    );
    let patches = site.patches();
    assert_eq!(
        patches[0]
            .get("status_details")
            .map(|d| d.starts_with("ingestion_hostname-")),
        Some(true)
    );
    assert!(
        patches
            .iter()
            .any(|p| p.get("md5").is_some_and(|m| m.len() == 32)),
        "md5 of the submission"
    );
    // The prediction is uploaded before Scoring is reported.
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    assert_eq!(up.content_type, "application/zip");
    assert_eq!(up.headers.get("x-ms-blob-type").unwrap(), "BlockBlob");
    let names = zip_names(&up.body);
    let ingest_err = site
        .upload("prediction_ingestion_stderr.txt")
        .map(|u| String::from_utf8_lossy(&u.body).into_owned());
    assert!(
        names.contains(&"predictions.txt".to_string()),
        "{names:?}\ningestion stderr: {ingest_err:?}\nlog:\n{}",
        serve.log()
    );
    assert!(zip_file(&up.body, "metadata").contains("ingestionExitCode: 0"));
    let ingest_log = site
        .upload("prediction_ingestion_stdout.txt")
        .expect("ingestion stdout uploaded");
    assert!(String::from_utf8_lossy(&ingest_log.body).contains("ingestion: done"));
    let frames = site
        .ws_frames_when(|f| f.iter().any(|f| f.frame["kind"] == "ingestion"))
        .await;
    assert!(frames.iter().any(|f| f.frame["message"]
        .as_str()
        .is_some_and(|m| m.contains("8 samples"))));

    publish(&queue, &scoring_args(&site, IMAGE));
    let st = wait_for_status(&site, &serve, "Finished", 90).await;
    assert_eq!(
        st,
        ["Running", "Preparing", "Scoring", "Running", "Finished"],
        "log:\n{}",
        serve.log()
    );
    assert_eq!(site.scores(), [json!({"accuracy": 1.0})]);
    let html = site
        .upload("detailed_results.html")
        .expect("detailed results uploaded");
    assert_eq!(html.content_type, "text/html");
    assert!(String::from_utf8_lossy(&html.body).contains("Accuracy 1.0000"));
    assert!(site.upload("scoring_result.zip").is_some());
    let host = serve.host_dir.clone();
    serve.stop();
    let left: Vec<_> = fs::read_dir(&host)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|p| p.ends_with("data") || p.ends_with("cache")),
        "job directories left: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_with_the_pull_report() {
    let queue = unique_queue("e2e-pull");
    let serve = Serve::start("serve-pull", &queue);
    let site = demo_site(502).await;
    publish(
        &queue,
        &prediction_args(&site, "localhost:1/nothing/here:1", 60),
    );
    let st = wait_for_status(&site, &serve, "Failed", 120).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    let patches = site.patches();
    let report = patches
        .iter()
        .find(|p| p.get("type").is_some())
        .expect("a failure report");
    assert_eq!(report.get("type"), Some("Docker_Image_Pull_Fail"));
    assert_eq!(report.get("is_scoring"), Some("False"));
    let failed = patches
        .iter()
        .rev()
        .find(|p| p.get("status") == Some("Failed"))
        .unwrap();
    assert!(failed
        .get("status_details")
        .unwrap()
        .contains("Pull for localhost:1/nothing/here:1 failed"));
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_kills_both_programs_and_is_reported() {
    let queue = unique_queue("e2e-limit");
    let serve = Serve::start("serve-limit", &queue);
    let site = FakeSite::start(503, 7).await;
    let slow = user_dir("slow-submission", 0o755);
    fs::write(
        slow.join("metadata"),
        "command: sh -c 'sleep 4401 & sleep 4402'\n",
    )
    .unwrap();
    site.add_bundle("submission.zip", zip_of(&slow));
    let ingest = user_dir("slow-ingestion", 0o755);
    fs::write(ingest.join("metadata"), "command: sleep 4403\n").unwrap();
    site.add_bundle("ingestion_program.zip", zip_of(&ingest));
    site.add_bundle("input_data.zip", demo_zip("input_data"));

    let t = Instant::now();
    publish(&queue, &prediction_args(&site, IMAGE, 2));
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let patches = site.patches();
    let report = patches
        .iter()
        .find(|p| p.get("type").is_some())
        .expect("a failure report");
    assert_eq!(report.get("type"), Some("Execution_Time_Limit_Exceeded"));
    assert_eq!(
        report.get("error_message"),
        Some("Execution Time Limit exceeded. Limit was 2 seconds")
    );
    assert!(
        host_processes("sleep 440").is_empty(),
        "{:?}",
        host_processes("sleep 440")
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_kills_the_running_job() {
    let queue = unique_queue("e2e-revoke");
    let serve = Serve::start("serve-revoke", &queue);
    let site = FakeSite::start(504, 7).await;
    let slow = user_dir("revoke-submission", 0o755);
    fs::write(
        slow.join("metadata"),
        "command: sh -c 'sleep 4411 & exec sleep 4412'\n",
    )
    .unwrap();
    site.add_bundle("submission.zip", zip_of(&slow));
    let mut args = prediction_args(&site, IMAGE, 600);
    args.as_object_mut().unwrap().remove("ingestion_program");
    args.as_object_mut().unwrap().remove("input_data");
    let task = publish(&queue, &args);
    let t = Instant::now();
    while host_processes("sleep 4412").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never started:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    revoke(&task);
    let t = Instant::now();
    while !host_processes("sleep 441").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "revoke did not kill the job:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!site.statuses().contains(&"Scoring".to_string()));
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scoring_program_and_missing_scores_fail() {
    let queue = unique_queue("e2e-scorefail");
    let serve = Serve::start("serve-scorefail", &queue);
    for (id, command) in [(505, "sh -c 'echo broken >&2; exit 3'"), (506, "true")] {
        let site = FakeSite::start(id, 7).await;
        let scoring = user_dir(&format!("scoring-{id}"), 0o755);
        fs::write(scoring.join("metadata"), format!("command: {command}\n")).unwrap();
        site.add_bundle("scoring_program.zip", zip_of(&scoring));
        site.add_bundle("reference_data.zip", demo_zip("reference_data"));
        let res = user_dir(&format!("res-{id}"), 0o755);
        fs::write(res.join("predictions.txt"), "odd\n").unwrap();
        site.add_bundle("prediction_result.zip", zip_of(&res));
        publish(&queue, &scoring_args(&site, IMAGE));
        let st = wait_for_status(&site, &serve, "Finished", 60).await;
        assert_eq!(st.last().map(String::as_str), Some("Failed"), "{st:?}");
        assert!(!st.contains(&"Finished".to_string()));
        assert!(site.scores().is_empty());
        let details = site
            .patches()
            .last()
            .unwrap()
            .get("status_details")
            .unwrap()
            .to_string();
        if id == 505 {
            assert!(details.contains("exit code 3"), "{details}");
            let err = site.upload("scoring_stderr.txt").expect("stderr uploaded");
            assert!(String::from_utf8_lossy(&err.body).contains("broken"));
        } else {
            assert!(details.contains("Could not find scores file"), "{details}");
        }
    }
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_zip_fails_fast() {
    let queue = unique_queue("e2e-badzip");
    let serve = Serve::start("serve-badzip", &queue);
    let site = demo_site(507).await;
    site.add_bundle("submission.zip", b"this is not a zip".to_vec());
    let t = Instant::now();
    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let details = site
        .patches()
        .last()
        .unwrap()
        .get("status_details")
        .unwrap()
        .to_string();
    assert!(details.contains("Bad or empty zip file"), "{details}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_gives_the_job_back_to_another_worker() {
    let queue = unique_queue("e2e-sigterm");
    let mut first = Serve::start_with(
        "serve-sigterm-a",
        &queue,
        &[("COMPUTE_WORKER_DRAIN_TIMEOUT", "1s")],
    );
    let site = FakeSite::start(508, 7).await;
    let sub = user_dir("sigterm-submission", 0o755);
    fs::write(
        sub.join("metadata"),
        "command: sh -c 'sleep 4.321; echo odd > /app/output/predictions.txt'\n",
    )
    .unwrap();
    site.add_bundle("submission.zip", zip_of(&sub));
    let mut args = prediction_args(&site, IMAGE, 60);
    args.as_object_mut().unwrap().remove("ingestion_program");
    args.as_object_mut().unwrap().remove("input_data");
    publish(&queue, &args);
    let t = Instant::now();
    while host_processes("sleep 4.321").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never started:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: the job may run for the 1 s drain, then it is killed and
    // its task goes back to the queue; the worker exits cleanly.
    let pid = nix::unistd::Pid::from_raw(first.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = first.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "serve did not stop:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}\n{}", first.log());
    assert!(
        host_processes("sleep 4.321").is_empty(),
        "the sandbox outlived the worker"
    );
    assert!(!site.statuses().contains(&"Scoring".to_string()));

    // Another worker gets the same task and finishes it.
    let second = Serve::start("serve-sigterm-b", &queue);
    let st = wait_for_status(&site, &second, "Scoring", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    assert_eq!(zip_file(&up.body, "predictions.txt"), "odd\n");
    second.stop();
}

/// Statuses the site received for one submission, counted.
fn count(statuses: &[String], status: &str) -> usize {
    statuses.iter().filter(|s| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_lost_mid_job_neither_loses_nor_repeats_it() {
    let queue = unique_queue("e2e-brokerloss");
    let serve = Serve::start("serve-brokerloss", &queue);
    let site = FakeSite::start(509, 7).await;
    let sub = user_dir("brokerloss-submission", 0o755);
    fs::write(
        sub.join("metadata"),
        "command: sh -c 'sleep 3.141; echo even > /app/output/predictions.txt'\n",
    )
    .unwrap();
    site.add_bundle("submission.zip", zip_of(&sub));
    let mut args = prediction_args(&site, IMAGE, 60);
    args.as_object_mut().unwrap().remove("ingestion_program");
    args.as_object_mut().unwrap().remove("input_data");
    publish(&queue, &args);
    let t = Instant::now();
    while host_processes("sleep 3.141").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never started:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The broker drops the worker's connection while the job runs: the
    // unacknowledged task goes back to the queue and is redelivered after
    // the worker reconnects.
    let host = compute_worker::broker::consumer::hostname();
    let name = format!("compute-worker@{host}:{}", serve.child.id());
    assert!(
        support::amqp::drop_connection(&name) > 0,
        "connection {name} not found"
    );
    let st = wait_for_status(&site, &serve, "Scoring", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    // Give a redelivered copy time to arrive; it must not run again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = site.statuses();
    assert_eq!(
        count(&st, "Running"),
        1,
        "run twice: {st:?}\n{}",
        serve.log()
    );
    assert_eq!(count(&st, "Scoring"), 1, "{st:?}");
    assert!(
        serve.log().contains("connected to broker"),
        "{}",
        serve.log()
    );
    let conn = support::amqp::connect().await;
    assert_eq!(
        support::amqp::message_count(&conn, &queue).await,
        0,
        "the task is settled"
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_run_jobs_at_the_same_time() {
    let queue = unique_queue("e2e-slots");
    let serve = Serve::start_with("serve-slots", &queue, &[("COMPUTE_WORKER_SLOTS", "2")]);
    let mut sites = Vec::new();
    for (id, marker) in [(510, "2.718"), (511, "2.719")] {
        let site = FakeSite::start(id, 7).await;
        let sub = user_dir(&format!("slots-{id}"), 0o755);
        fs::write(
            sub.join("metadata"),
            format!("command: sh -c 'sleep {marker}; echo odd > /app/output/predictions.txt'\n"),
        )
        .unwrap();
        site.add_bundle("submission.zip", zip_of(&sub));
        let mut args = prediction_args(&site, IMAGE, 60);
        args.as_object_mut().unwrap().remove("ingestion_program");
        args.as_object_mut().unwrap().remove("input_data");
        publish(&queue, &args);
        sites.push(site);
    }
    let t = Instant::now();
    while host_processes("sleep 2.718").is_empty() || host_processes("sleep 2.719").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "both jobs never ran at once:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for site in &sites {
        let st = wait_for_status(site, &serve, "Scoring", 60).await;
        assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    }
    serve.stop();
}
