//! `compute-worker serve` end to end: tasks published by the real Celery
//! through the real RabbitMQ, jobs run in real rootless sandboxes as the
//! unprivileged test user, reports to a fake Codabench site that checks
//! what the real one checks.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::json;

use e2e::*;
use sandbox_env::{host_processes, user_dir};
use support::amqp::unique_queue;
use support::site::FakeSite;

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
    // Every line is there once the status is: no waiting.
    assert!(
        site.has_line("ingestion", "8 samples"),
        "{:?}",
        site.ws_frames()
    );

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
    // HOST_DIRECTORY (job directories, the dataset cache with reference
    // data) is the worker's alone.
    let mode = fs::metadata(&host).unwrap().mode() & 0o7777;
    assert_eq!(
        mode,
        0o700,
        "HOST_DIRECTORY {} has mode {mode:04o}",
        host.display()
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
    let report = site.failure_report();
    assert_eq!(report.get("type"), Some("Docker_Image_Pull_Fail"));
    assert_eq!(report.get("is_scoring"), Some("False"));
    assert!(site
        .failed_details()
        .starts_with("Docker image pull failed: Pull for localhost:1/nothing/here:1 failed"));
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_the_size_cap_fails_the_job_at_once_naming_size_and_cap() {
    let reg = test_support::Registry::start();
    let img = test_support::TestImage::new(vec![test_support::busybox_rootfs_layer(
        test_support::Comp::Gzip,
    )]);
    test_support::push(&reg.host(), "cw-e2e/big:1", &img).await;
    let size = img.layers[0].blob.len() as u64;
    let reference = format!("{}/cw-e2e/big:1", reg.host());
    let queue = unique_queue("e2e-cap");
    let serve = Serve::start_with(
        "serve-cap",
        &queue,
        &[("COMPUTE_WORKER_MAX_IMAGE_SIZE", "100k")],
    );
    let site = demo_site(509).await;
    publish(&queue, &prediction_args(&site, &reference, 60));
    wait_for_status(&site, &serve, "Failed", 120).await;
    let patches = site.patches();
    let report = site.failure_report();
    assert_eq!(report.get("type"), Some("Docker_Image_Pull_Fail"));
    let all = format!("{patches:?}");
    assert!(
        all.contains(&reference)
            && all.contains(&format!("({size} bytes)"))
            && all.contains("cap of 100.0 KiB (102400 bytes)"),
        "{all}\n{}",
        serve.log()
    );
    // Refused from the manifest: no blob was fetched, and it was not retried.
    assert_eq!(reg.blob_gets(&img.layers[0].digest()), 0);
    assert_eq!(reg.manifest_gets("cw-e2e/big", "1"), 1, "{}", serve.log());
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
    let report = site.failure_report();
    assert_eq!(report.get("type"), Some("Execution_Time_Limit_Exceeded"));
    assert_eq!(
        report.get("error_message"),
        Some("Execution Time Limit exceeded. Limit was 2 seconds")
    );
    // Only this test's sleeps: the soft-limit test runs `sleep 4404` at the
    // same time.
    let left: Vec<String> = ["sleep 4401", "sleep 4402", "sleep 4403"]
        .iter()
        .flat_map(|s| host_processes(s))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_kills_the_running_job() {
    let queue = unique_queue("e2e-revoke");
    let serve = Serve::start("serve-revoke", &queue);
    let site = FakeSite::start(504, 7).await;
    let args = submission_only_args(
        &site,
        "revoke-submission",
        "sh -c 'sleep 4411 & exec sleep 4412'",
        600,
    );
    let task = publish(&queue, &args);
    serve.wait_for_process("sleep 4412").await;
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
        let details = site.last_details();
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
    let details = site.last_details();
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
    publish_sleeper(&first, &queue, &site, "sigterm-submission", "4.321").await;
    // SIGTERM: the job may run for the 1 s drain, then it is killed and
    // its task goes back to the queue; the worker exits cleanly.
    first.sigterm();
    let status = first.wait_exit(Duration::from_secs(20));
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
    let args = submission_only_args(
        &site,
        "brokerloss-submission",
        "sh -c 'sleep 3.141; echo even > /app/output/predictions.txt'",
        60,
    );
    publish(&queue, &args);
    serve.wait_for_process("sleep 3.141").await;
    // The broker drops the worker's connection while the job runs: the
    // unacknowledged task goes back to the queue and is redelivered after
    // the worker reconnects.
    let host = compute_worker::hostname::hostname();
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
        let command = format!("sh -c 'sleep {marker}; echo odd > /app/output/predictions.txt'");
        let args = submission_only_args(&site, &format!("slots-{id}"), &command, 60);
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

/// Celery's soft limit (the site's execution limit + 20 min, from receipt)
/// ends the job as Codabench's worker ends it: `Failed`, "Soft time limit
/// exceeded!", no time-limit report, nothing left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_time_limit_fails_the_job_and_kills_it() {
    let queue = unique_queue("e2e-soft");
    let serve = Serve::start("serve-soft", &queue);
    let site = FakeSite::start(507, 7).await;
    let args = submission_only_args(&site, "soft-submission", "sleep 4404", 600);
    publish_with_soft_limit(&queue, &args, 3);
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"), "{st:?}");
    let patches = site.patches();
    assert!(
        patches.iter().all(|p| p.get("type").is_none()),
        "{patches:?}"
    );
    let details = site.last_details();
    assert!(
        details.starts_with("Soft time limit exceeded!"),
        "{details}"
    );
    assert!(host_processes("sleep 4404").is_empty());
    serve.stop();
}

/// A site that answers a PATCH with an error: a failed Running report does
/// not stop the job. A `Scoring` PATCH answered with 500 is never sent
/// again: Codabench queues the scoring step before it saves the status, so
/// a retry would score the submission twice (upstream #2419, #2557).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoring_patch_answered_500_queues_scoring_only_once() {
    let queue = unique_queue("e2e-patch500");
    let serve = Serve::start("serve-patch500", &queue);
    let site = FakeSite::start(508, 7).await;
    site.fail_status("Running", 503, 1);
    site.fail_status("Scoring", 500, 2);
    let args = submission_only_args(&site, "patch-submission", "echo ok", 60);
    publish(&queue, &args);
    let t = Instant::now();
    while !serve.log().contains("job done") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the job did not end; statuses {:?}\n{}",
            site.statuses(),
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Longer than the worker's pause between status retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(site.scorings_queued(), 1, "{}", serve.log());
    let st = site.statuses();
    assert!(!st.contains(&"Failed".to_string()), "{st:?}");
    let rejected: Vec<String> = site
        .rejected_patches()
        .iter()
        .filter_map(|(_, form)| {
            form.iter()
                .find(|(k, _)| k == "status")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(rejected, ["Running", "Scoring"]);
    assert!(
        serve.log().contains("not sending it again"),
        "the worker says why: {}",
        serve.log()
    );
    serve.stop();
}

/// SIGTERM lets a running job finish (it is reported, not given back),
/// and a second SIGTERM stops the worker at once, whatever the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_job_finishes_and_a_second_sigterm_is_immediate() {
    let queue = unique_queue("e2e-drain");
    let mut serve = Serve::start("serve-drain", &queue);
    let site = FakeSite::start(509, 7).await;
    publish_sleeper(&serve, &queue, &site, "drain-submission", "2.345").await;
    serve.sigterm();
    let status = serve.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", serve.log());
    let st = site.statuses();
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");

    // The default drain is 5 minutes; the second signal does not wait.
    let mut serve = Serve::start("serve-drain-twice", &queue);
    let site = FakeSite::start(510, 7).await;
    let args = submission_only_args(&site, "drain-twice", "sleep 4.567", 600);
    publish(&queue, &args);
    serve.wait_for_process("sleep 4.567").await;
    serve.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve.sigterm();
    let status = serve.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", serve.log());
    assert!(host_processes("sleep 4.567").is_empty());
    assert!(!site.statuses().contains(&"Failed".to_string()));
}

/// `--log-format json`: one JSON object a line, and a job's lines carry
/// its span with the submission id (what a log shipper filters on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_submission_in_the_job_span() {
    let queue = unique_queue("e2e-jsonlog");
    let serve = Serve::start_with(
        "serve-jsonlog",
        &queue,
        &[("COMPUTE_WORKER_LOG_FORMAT", "json")],
    );
    let site = FakeSite::start(511, 7).await;
    let args = submission_only_args(&site, "jsonlog-submission", "echo ok", 60);
    publish(&queue, &args);
    wait_for_status(&site, &serve, "Scoring", 60).await;
    // The site sees `Scoring` before the worker logs the job's end.
    let t = Instant::now();
    while !serve.log().contains("\"job done\"") && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = serve.log();
    serve.stop();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job done" && l["span"]["name"] == "job")
        .unwrap_or_else(|| panic!("no job span line in\n{log}"));
    assert_eq!(done["span"]["submission"], 511, "{done}");
    assert_eq!(done["span"]["scoring"], false, "{done}");
}

/// Issue 16: the job's JSON line says where its time went, stage by
/// stage (the stages add up to the time from the task's receipt to that
/// line, within 5 %), how the image came, and what the program used;
/// the stderr log the site receives ends with that resource report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_say_where_the_time_went_and_what_the_program_used() {
    let queue = unique_queue("e2e-stages");
    let serve = Serve::start_with(
        "serve-stages",
        &queue,
        &[("COMPUTE_WORKER_LOG_FORMAT", "json")],
    );
    let site = FakeSite::start(513, 7).await;
    let args = submission_only_args(
        &site,
        "stages-submission",
        "sh -c 'sleep 1.5; echo done >&2'",
        60,
    );
    publish(&queue, &args);
    wait_for_status(&site, &serve, "Scoring", 60).await;
    let t = Instant::now();
    while !serve.log().contains("\"job done\"") && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = serve.log();
    serve.stop();
    let done: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "job done")
        .unwrap_or_else(|| panic!("no job done line in\n{log}"));
    let f = &done["fields"];
    let secs = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k} in {done}"));
    let stages = [
        "received_s",
        "bundles_downloaded_s",
        "image_ready_s",
        "sandbox_up_s",
        "program_done_s",
        "outputs_uploaded_s",
        "final_status_s",
        "cleanup_s",
    ];
    let sum: f64 = stages.iter().map(|k| secs(k)).sum();
    let elapsed = secs("elapsed_s");
    assert!(
        (sum - elapsed).abs() <= 0.05 * elapsed,
        "stages add up to {sum} s, the job took {elapsed} s: {done}"
    );
    assert!(secs("program_done_s") >= 1.5, "{done}");
    assert_eq!(f["image_source"], "cached", "{done}");
    assert_eq!(f["image_bytes"], 0, "{done}");
    let resources: serde_json::Value =
        serde_json::from_str(f["resources"].as_str().expect("resources")).unwrap();
    let submission = &resources[0];
    assert_eq!(submission["program"], "submission", "{resources}");
    assert_eq!(submission["ended"], "exit code 0", "{resources}");
    assert!(
        submission["wall_seconds"].as_f64().unwrap() >= 1.5,
        "{resources}"
    );
    assert!(
        submission["peak_memory_bytes"].as_u64().unwrap() > 0,
        "{resources}"
    );
    let err = site
        .upload("prediction_stderr.txt")
        .expect("stderr uploaded");
    let err = String::from_utf8_lossy(&err.body).into_owned();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("[compute-worker] resources of the submission")
            && last.contains("exit code 0"),
        "{err}"
    );
}

/// The site drops the live-log WebSocket mid-stream and refuses the next
/// two connection attempts (a restart): the worker reconnects, the user
/// still sees every line of the program's output, in order, and the job
/// ends as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_logs_survive_a_dropped_websocket_without_losing_lines() {
    let queue = unique_queue("e2e-wsdrop");
    let serve = Serve::start("serve-wsdrop", &queue);
    let site = FakeSite::start(512, 7).await;
    site.drop_websocket_after(10, 2);
    let args = submission_only_args(
        &site,
        "wsdrop-submission",
        "sh -c 'for i in $(seq 1 40); do echo line $i; sleep 0.1; done; echo odd > /app/output/predictions.txt'",
        60,
    );
    publish(&queue, &args);
    let st = wait_for_status(&site, &serve, "Scoring", 60).await;
    assert_eq!(st, ["Running", "Preparing", "Scoring"], "{}", serve.log());

    let program_lines = |frames: &[support::site::WsFrame]| -> Vec<String> {
        frames
            .iter()
            .filter(|f| f.query_kind.as_deref() == Some("program"))
            .filter_map(|f| f.frame["message"].as_str())
            .map(|m| m.trim_end().to_string())
            .collect()
    };
    let frames = site
        .ws_frames_when(|f| program_lines(f).iter().any(|l| l == "line 40"))
        .await;
    let lines = program_lines(&frames);
    assert!(
        site.ws_connections() >= 2,
        "no reconnection: {} connection(s)\n{}",
        site.ws_connections(),
        serve.log()
    );
    // Every line, in order; a line the site got just before the drop may
    // come again after it (it could not confirm it), nothing else.
    let mut firsts: Vec<&String> = Vec::new();
    for l in &lines {
        if !firsts.contains(&l) {
            firsts.push(l);
        }
    }
    let want: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(firsts, want.iter().collect::<Vec<_>>(), "{lines:#?}");
    assert!(lines.len() <= 40 + 10, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains("dropped")), "{lines:#?}");
    serve.stop();
}

/// A bundle the site's storage refuses (404): the job fails at once with
/// Codabench's "Problem fetching" message naming the bundle, and nothing
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_the_storage_refuses_fails_the_job_naming_it() {
    let queue = unique_queue("e2e-get404");
    let serve = Serve::start("serve-get404", &queue);
    let site = demo_site(513).await;
    site.fail_get("input_data.zip", 404, 100);
    let t = Instant::now();
    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"), "{st:?}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let details = site.last_details();
    assert!(details.starts_with("Problem fetching http://"), "{details}");
    assert!(details.contains("input_data.zip"), "{details}");
    assert!(site.uploads().is_empty(), "{:?}", site.uploads().len());
    serve.stop();
}

/// The fork servers whose parent is `pid`.
fn fork_servers_of(pid: u32) -> Vec<i32> {
    host_processes("")
        .iter()
        .filter(|p| p.contains(" __fork-server"))
        .filter_map(|p| p.split(':').next()?.parse::<i32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces.
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(pid.to_string().as_str())
            })
        })
        .collect()
}

/// The one fork server of `serve`, once it is there.
async fn the_fork_server(serve: &Serve) -> i32 {
    let t = Instant::now();
    let mut servers = fork_servers_of(serve.child.id());
    while servers.is_empty() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        servers = fork_servers_of(serve.child.id());
    }
    assert_eq!(
        servers.len(),
        1,
        "{:?}\n{}",
        host_processes(""),
        serve.log()
    );
    servers[0]
}

/// Issue 15: serve's sandboxes are cloned by a fork server that holds
/// nothing of the worker's (no variable of its environment beyond a few
/// harmless ones, so no broker password; no fd beyond stdio and its
/// socket). Killed, it is started again and the next job runs; it ends
/// with serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fork_server_holds_no_secrets_and_a_killed_one_is_replaced() {
    let queue = unique_queue("e2e-forkserver");
    let secret = "fork-server-must-not-see-this";
    let serve = Serve::start_with(
        "serve-forkserver",
        &queue,
        &[("COMPUTE_WORKER_TEST_SECRET", secret)],
    );
    let site = FakeSite::start(521, 7).await;
    let server = the_fork_server(&serve).await;
    let environ = fs::read(format!("/proc/{server}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(secret), "{environ}");
    assert!(!environ.contains("BROKER_URL"), "{environ}");
    let fds: Vec<String> = fs::read_dir(format!("/proc/{server}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(fds.len(), 4, "stdio and its socket only: {fds:?}");

    publish(
        &queue,
        &submission_only_args(&site, "fork-1", "echo one", 60),
    );
    wait_for_status(&site, &serve, "Scoring", 60).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    publish(
        &queue,
        &submission_only_args(&site, "fork-2", "echo two", 60),
    );
    let t = Instant::now();
    while site.statuses().iter().filter(|s| *s == "Scoring").count() < 2
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = serve.log();
    assert_eq!(
        site.statuses().iter().filter(|s| *s == "Scoring").count(),
        2,
        "{:?}\n{log}",
        site.statuses()
    );
    assert!(log.contains("fork server restarted"), "{log}");
    let replaced = fork_servers_of(serve.child.id());
    assert_eq!(replaced.len(), 1, "{log}");
    assert_ne!(replaced[0], server);
    serve.stop();
    let t = Instant::now();
    // Gone, or a zombie its new parent has yet to reap.
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        })
    };
    while alive(replaced[0]) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the fork server outlived serve"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes waiting in the receive queue of fd 3 (the socket) of `pid`.
fn socket_queue(pid: i32) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-x", "-p", "-n"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&format!("pid={pid},fd=3)")))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(0)
}

/// Issue 15: a fork server that dies with a request in hand costs no job.
/// The server is stopped, a job's sandbox start sends it a request, the
/// server is killed before it reads it: no launcher exists, the control
/// socket ends, and the worker starts that sandbox by exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_server_that_dies_with_a_request_costs_no_job() {
    let queue = unique_queue("e2e-forkserver-lost");
    let serve = Serve::start("serve-forkserver-lost", &queue);
    let site = FakeSite::start(522, 7).await;
    let server = the_fork_server(&serve).await;
    let pid = nix::unistd::Pid::from_raw(server);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    publish(
        &queue,
        &submission_only_args(&site, "fork-lost", "echo survived", 60),
    );
    let t = Instant::now();
    while socket_queue(server) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no request reached the fork server\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let st = wait_for_status(&site, &serve, "Scoring", 60).await;
    let log = serve.log();
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{st:?}\n{log}"
    );
    assert!(
        log.contains("no launcher was cloned; starting this sandbox by exec"),
        "{log}"
    );
    serve.stop();
}
