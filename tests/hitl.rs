//! Human in the loop, local-image mode and the silent worker through
//! `compute-worker serve`:
//! tasks published by the real Celery through the real RabbitMQ, jobs run
//! in real rootless sandboxes as the unprivileged test user, the operator
//! acting with `compute-worker hitl` as the same user, the fake site.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use e2e::*;
use sandbox_env::{env, user_dir};
use support::amqp::unique_queue;
use support::site::FakeSite;

const HITL_ON: &[(&str, &str)] = &[("HUMAN_IN_THE_LOOP", "true")];

fn with_hitl(mut args: Value, on: bool) -> Value {
    args["human_in_the_loop"] = json!(on);
    args
}

/// `compute-worker hitl ARGS` as the worker's user, against `serve`.
fn hitl(serve: &Serve, args: &[&str]) -> (bool, String) {
    let images = serve.host_dir.parent().unwrap().join("images");
    let mut full = vec!["hitl"];
    full.extend_from_slice(args);
    let out = env()
        .images_command(&images, &full)
        .env("HOST_DIRECTORY", &serve.host_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A scoring task whose program writes `scores.txt` (and runs `extra`),
/// with a prediction already on the site.
fn scoring_task(site: &FakeSite, name: &str, extra: &str) -> Value {
    let prog = user_dir(name, 0o755);
    fs::write(
        prog.join("score.sh"),
        format!(
            "echo 'accuracy: 0.75' > /app/output/scores.txt\n\
             echo '<p>details</p>' > /app/output/detailed_results.html\n\
             echo scoring-ran\n{extra}\n"
        ),
    )
    .unwrap();
    fs::write(prog.join("metadata"), "command: sh /app/program/score.sh\n").unwrap();
    site.add_bundle("scoring_program.zip", zip_of(&prog));
    let pred = user_dir(&format!("{name}-pred"), 0o755);
    fs::write(pred.join("predictions.txt"), "odd\n").unwrap();
    site.add_bundle("prediction_result.zip", zip_of(&pred));
    let mut args = scoring_args(site, IMAGE);
    args.as_object_mut().unwrap().remove("reference_data");
    with_hitl(args, true)
}

/// Wait until the site has seen `status` `n` times (or a Failed).
async fn wait_for_nth(site: &FakeSite, serve: &Serve, status: &str, n: usize) -> Vec<String> {
    for _ in 0..1200 {
        let st = site.statuses();
        if st.iter().filter(|s| *s == status).count() >= n || st.iter().any(|s| s == "Failed") {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no {status} x{n}: {:?}\nlog:\n{}",
        site.statuses(),
        serve.log()
    );
}

/// Nothing of the scoring result reached the site.
fn assert_nothing_published(site: &FakeSite, serve: &Serve) {
    assert!(
        site.scores().is_empty(),
        "scores: {:?}\n{}",
        site.scores(),
        serve.log()
    );
    assert!(site.upload("scoring_result.zip").is_none());
    assert!(site.upload("detailed_results.html").is_none());
    assert!(!site.statuses().contains(&"Finished".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_scoring_publishes_only_after_the_operator_approves() {
    let queue = unique_queue("hitl-approve");
    let serve = Serve::start_with("hitl-approve", &queue, HITL_ON);
    let site = FakeSite::start(901, 7).await;
    publish(&queue, &scoring_task(&site, "hitl-approve-prog", "true"));
    let st = wait_for_nth(&site, &serve, "Awaiting validation", 1).await;
    assert_eq!(st, ["Running", "Awaiting validation"], "{}", serve.log());
    // Logs go out before approval, as upstream; results do not.
    let stdout = site.upload("scoring_stdout.txt").expect("logs uploaded");
    assert!(String::from_utf8_lossy(&stdout.body).contains("scoring-ran"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_nothing_published(&site, &serve);

    // The job's log says where decisions are read.
    let hitl_dir = serve.host_dir.join("hitl").join("901");
    assert!(
        serve.log().contains(&hitl_dir.display().to_string()),
        "{}",
        serve.log()
    );
    let (ok, list) = hitl(&serve, &["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("submission 901") && list.contains("0.75") && list.contains("/output"),
        "{list}"
    );
    let (ok, json) = hitl(&serve, &["list", "--json"]);
    assert!(ok, "{json}");
    let pending: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(pending[0]["scores"], json!({"accuracy": 0.75}));

    let (ok, out) = hitl(&serve, &["approve", "901"]);
    assert!(ok, "{out}");
    let st = wait_for_nth(&site, &serve, "Finished", 1).await;
    assert_eq!(
        st,
        ["Running", "Awaiting validation", "Finished"],
        "{}",
        serve.log()
    );
    assert_eq!(site.scores(), [json!({"accuracy": 0.75})]);
    assert!(site.upload("scoring_result.zip").is_some());
    let html = site.upload("detailed_results.html").expect("details");
    assert!(String::from_utf8_lossy(&html.body).contains("details"));
    let (_, list) = hitl(&serve, &["list"]);
    assert!(list.contains("no job awaits validation"), "{list}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_approve_itself_and_a_rejection_publishes_nothing() {
    let queue = unique_queue("hitl-reject");
    let serve = Serve::start_with("hitl-reject", &queue, HITL_ON);
    let site = FakeSite::start(902, 7).await;
    // Upstream's markers, written by the scoring program itself.
    let selfish = "touch /app/output/hitl_approved; touch /app/output/decision";
    publish(&queue, &scoring_task(&site, "hitl-reject-prog", selfish));
    wait_for_nth(&site, &serve, "Awaiting validation", 1).await;
    // Several polls later, still waiting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_nothing_published(&site, &serve);
    assert_eq!(site.statuses(), ["Running", "Awaiting validation"]);

    let (ok, out) = hitl(&serve, &["reject", "902"]);
    assert!(ok, "{out}");
    let st = wait_for_nth(&site, &serve, "Failed", 1).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    assert_eq!(
        site.last_details(),
        "Submission failed: HITL: submission 902 rejected by the compute node operator.. \
         See logs for more details."
    );
    assert_nothing_published(&site, &serve);
    // A decision about a job that is no longer waiting is refused.
    let (ok, out) = hitl(&serve, &["approve", "902"]);
    assert!(!ok && out.contains("no job of submission 902"), "{out}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hitl_mismatch_fails_at_once_in_both_directions() {
    let queue = unique_queue("hitl-mismatch");
    // A HITL task on a normal worker.
    let normal = Serve::start("hitl-mismatch-normal", &queue);
    let site = demo_site(903).await;
    publish(&queue, &with_hitl(prediction_args(&site, IMAGE, 60), true));
    wait_for_nth(&site, &normal, "Failed", 1).await;
    let patches = site.patches();
    assert_eq!(patches.len(), 1, "only the final PATCH: {patches:?}");
    assert_eq!(
        site.last_details(),
        "Submission failed: Task rejected because the Site Worker and Compute Worker do not have \
         the same HUMAN_IN_THE_LOOP configuration (task=True, compute_worker=False).. \
         See logs for more details."
    );
    assert!(site.uploads().is_empty());
    normal.stop();

    // A normal task (no key at all, as old sites send) on a HITL worker.
    let queue = unique_queue("hitl-mismatch-2");
    let hitl_worker = Serve::start_with("hitl-mismatch-hitl", &queue, HITL_ON);
    let site = demo_site(904).await;
    publish(&queue, &scoring_args(&site, IMAGE));
    wait_for_nth(&site, &hitl_worker, "Failed", 1).await;
    assert_eq!(site.patches().len(), 1, "{:?}", site.patches());
    assert_eq!(
        site.last_details(),
        "Submission failed: Task rejected because the Site Worker and Compute Worker do not have \
         the same HUMAN_IN_THE_LOOP configuration (task=False, compute_worker=True).. \
         See logs for more details."
    );
    assert!(site.scores().is_empty() && site.uploads().is_empty());
    hitl_worker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_awaiting_validation_neither_loses_nor_publishes_the_job() {
    let queue = unique_queue("hitl-restart");
    let vars = [
        ("HUMAN_IN_THE_LOOP", "True"),
        ("COMPUTE_WORKER_DRAIN_TIMEOUT", "1s"),
    ];
    let mut first = Serve::start_with("hitl-restart-a", &queue, &vars);
    let site = FakeSite::start(905, 7).await;
    publish(&queue, &scoring_task(&site, "hitl-restart-prog", "true"));
    wait_for_nth(&site, &first, "Awaiting validation", 1).await;
    // Stopped while waiting: the task goes back to the broker, unpublished.
    first.sigterm();
    let status = first.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", first.log());
    assert_nothing_published(&site, &first);

    // The task was given back: the next worker scores it again and waits.
    let second = Serve::start_with("hitl-restart-b", &queue, HITL_ON);
    let st = wait_for_nth(&site, &second, "Awaiting validation", 2).await;
    assert!(!st.contains(&"Failed".to_string()), "{st:?}");
    assert_nothing_published(&site, &second);
    let (ok, out) = hitl(&second, &["approve", "905"]);
    assert!(ok, "{out}");
    wait_for_nth(&site, &second, "Finished", 1).await;
    assert_eq!(site.scores(), [json!({"accuracy": 0.75})]);
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_image_pull_only_cached_images_run() {
    let queue = unique_queue("no-pull");
    let serve = Serve::start_with(
        "no-pull",
        &queue,
        &[("COMPETITION_ALLOW_IMAGE_PULL", "False")],
    );
    // Cached (imported): runs.
    let site = demo_site(906).await;
    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");

    // Not cached: fails with upstream's text, with no pull attempted and
    // no pull-failure report.
    let site = demo_site(907).await;
    let missing = "localhost:1/cw-e2e/not-cached:1";
    publish(&queue, &prediction_args(&site, missing, 60));
    wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(
        site.last_details(),
        format!(
            "Docker image pull failed: Pull for {missing} failed! COMPETITION_ALLOW_IMAGE_PULL is \
             set to False, make sure the image is available locally"
        )
    );
    assert!(
        site.patches().iter().all(|p| p.get("type").is_none()),
        "{:?}",
        site.patches()
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_upload_disabled_logs_stay_on_the_host() {
    let queue = unique_queue("silent");
    let serve = Serve::start_with(
        "silent",
        &queue,
        &[("COMPUTE_WORKER_DISABLE_LOG_UPLOAD", "True")],
    );
    let site = demo_site(908).await;
    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    // The prediction goes up; the logs and the live lines do not.
    assert!(site.upload("prediction_result.zip").is_some());
    let uploads: Vec<_> = site.uploads().into_iter().map(|u| u.key).collect();
    assert_eq!(uploads, ["prediction_result.zip"], "{}", serve.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        site.ws_frames().is_empty(),
        "{} live frames",
        site.ws_frames().len()
    );

    // Failures point to the organisers, not to logs nobody can see.
    let site = demo_site(909).await;
    let missing = "localhost:1/cw-e2e/nowhere:1";
    publish(&queue, &prediction_args(&site, missing, 60));
    wait_for_status(&site, &serve, "Failed", 90).await;
    let details = site.last_details();
    assert!(
        details.ends_with(&format!(
            "Pull for {missing} failed! Contact the Organizer(s) for more details."
        )),
        "{details}"
    );
    serve.stop();
}
