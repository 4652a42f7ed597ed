//! `compute-worker serve` against a Codabench site of v1.27 or later
//! (codabench-protocol-v127.md): tasks with `submission_data`,
//! `ingestion_program_data` and `scoring_program_data`, published by the
//! real Celery, run in real rootless sandboxes, reported to the fake site.
//! The submission is never run; it is read-only at
//! `/app/ingested_program` in every program and merged into `input/res`
//! for scoring.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;

use md5::{Digest, Md5};
use serde_json::json;

use e2e::*;
use sandbox_env::user_dir;
use support::amqp::unique_queue;
use support::site::{FakeSite, SiteVersion};

/// A probe for a program: whether `/app/ingested_program` holds the
/// submission's `predict.sh` and can be written to.
const PROBE: &str = "if [ -f /app/ingested_program/predict.sh ]; then echo SUBMISSION-MOUNTED; fi; \
    if touch /app/ingested_program/written 2>/dev/null; then echo SUBMISSION-WRITABLE; else echo SUBMISSION-READONLY; fi";

/// The demo competition, with a submission whose `metadata` would leave a
/// mark if it ever ran, and programs that probe their mounts first.
async fn probing_site(id: u64) -> (FakeSite, Vec<u8>) {
    let site = demo_site(id).await;
    let sub = user_dir(&format!("v127-sub-{id}"), 0o755);
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/demo/submission/predict.sh"),
        sub.join("predict.sh"),
    )
    .unwrap();
    fs::write(
        sub.join("metadata"),
        "command: sh -c 'echo ran > /app/output/submission_ran'\n",
    )
    .unwrap();
    let submission = zip_of(&sub);
    site.add_bundle("submission.zip", submission.clone());

    let ingest = user_dir(&format!("v127-ingest-{id}"), 0o755);
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/demo/ingestion_program/ingest.sh"
        ),
        ingest.join("ingest.sh"),
    )
    .unwrap();
    fs::write(
        ingest.join("metadata.yaml"),
        format!("command: sh -c '{PROBE}; sh $ingestion_program/ingest.sh $input $output $submission_program'\n"),
    )
    .unwrap();
    site.add_bundle("ingestion_program.zip", zip_of(&ingest));

    let scoring = user_dir(&format!("v127-scoring-{id}"), 0o755);
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/demo/scoring_program/score.sh"),
        scoring.join("score.sh"),
    )
    .unwrap();
    fs::write(
        scoring.join("metadata.yaml"),
        format!(
            "command: sh -c '{PROBE}; ls /app/input/res; ls /app; sh /app/program/score.sh /app/input /app/output'\n"
        ),
    )
    .unwrap();
    site.add_bundle("scoring_program.zip", zip_of(&scoring));
    (site, submission)
}

fn text(site: &FakeSite, key: &str) -> String {
    site.upload(key)
        .map(|u| String::from_utf8_lossy(&u.body).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v127_submission_is_never_run_and_reaches_every_program_read_only() {
    let queue = unique_queue("v127-ok");
    let serve = Serve::start("serve-v127-ok", &queue);
    let (site, submission) = probing_site(701).await;

    publish(&queue, &site.task(SiteVersion::V127, false, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(
        st,
        ["Preparing", "Running", "Scoring"],
        "log:\n{}",
        serve.log()
    );
    let patches = site.patches();
    assert!(
        patches[0]
            .get("status_details")
            .is_some_and(|d| d.starts_with("ingestion_hostname-")),
        "{patches:?}"
    );
    let md5 = hex::encode(Md5::digest(&submission));
    assert!(
        patches.iter().any(|p| p.get("md5") == Some(md5.as_str())),
        "the md5 of submission_data: {patches:?}"
    );
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    let names = zip_names(&up.body);
    assert!(names.contains(&"predictions.txt".to_string()), "{names:?}");
    assert!(
        !names.contains(&"submission_ran".to_string()),
        "the submission ran: {names:?}"
    );
    // No submission copied to the output either (that was the old model).
    assert!(!names.contains(&"predict.sh".to_string()), "{names:?}");
    let metadata = zip_file(&up.body, "metadata");
    assert!(metadata.contains("exitCode: null"), "{metadata}");
    assert!(metadata.contains("ingestionExitCode: 0"), "{metadata}");
    let out = text(&site, "prediction_ingestion_stdout.txt");
    assert!(out.contains("SUBMISSION-MOUNTED"), "{out}");
    assert!(out.contains("SUBMISSION-READONLY"), "{out}");
    // The ingestion program's live log under its v1.27 name.
    // Every line is there once the status is: no waiting.
    assert!(
        site.has_line("ingestion_program", "8 samples"),
        "{:?}",
        site.ws_frames()
    );
    let frames = site.ws_frames();
    assert!(frames.iter().all(|f| f.frame["kind"] != "ingestion"));

    publish(&queue, &site.task(SiteVersion::V127, true, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Finished", 90).await;
    assert_eq!(
        st,
        [
            "Preparing",
            "Running",
            "Scoring",
            "Running",
            "Running",
            "Finished"
        ],
        "log:\n{}",
        serve.log()
    );
    let scoring_start = &site.patches()[patches.len()];
    assert!(
        scoring_start
            .get("status_details")
            .is_some_and(|d| d.starts_with("scoring_hostname-")),
        "{scoring_start:?}"
    );
    assert_eq!(site.scores(), [json!({"accuracy": 1.0})]);
    let out = text(&site, "scoring_stdout.txt");
    assert!(out.contains("SUBMISSION-MOUNTED"), "{out}");
    assert!(out.contains("SUBMISSION-READONLY"), "{out}");
    // The compatibility copy: the submission's files beside the predictions.
    let res_listing: Vec<&str> = out.split_whitespace().collect();
    for name in ["predict.sh", "predictions.txt"] {
        assert!(res_listing.contains(&name), "{out}");
    }
    assert!(site.upload("scoring_result.zip").is_some());
    let frames = site
        .ws_frames_when(|f| f.iter().any(|f| f.frame["kind"] == "scoring_program"))
        .await;
    assert!(frames.iter().any(|f| f.frame["kind"] == "scoring_program"));
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v127_result_submission_without_ingestion_is_scored_from_input_res() {
    let queue = unique_queue("v127-result");
    let serve = Serve::start("serve-v127-result", &queue);
    let site = FakeSite::start(702, 7).await;
    let sub = user_dir("v127-result-sub", 0o755);
    fs::write(
        sub.join("predictions.txt"),
        "odd\neven\nodd\neven\nodd\neven\nodd\neven\n",
    )
    .unwrap();
    site.add_bundle("submission.zip", zip_of(&sub));
    site.add_bundle("reference_data.zip", demo_zip("reference_data"));
    site.add_bundle("scoring_program.zip", demo_zip("scoring_program"));

    publish(&queue, &site.task(SiteVersion::V127, false, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(st, ["Preparing", "Running", "Scoring"], "{}", serve.log());
    // Nothing ran: the prediction holds only the worker's metadata.
    let up = site.upload("prediction_result.zip").unwrap();
    assert_eq!(zip_names(&up.body), ["metadata"]);

    publish(&queue, &site.task(SiteVersion::V127, true, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Finished", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Finished"),
        "{}",
        serve.log()
    );
    assert_eq!(site.scores(), [json!({"accuracy": 1.0})]);
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_submission_or_program_fails_at_once_naming_the_keys() {
    let queue = unique_queue("v127-malformed");
    let serve = Serve::start("serve-v127-malformed", &queue);
    let site = demo_site(703).await;
    let mut args = site.task(SiteVersion::V127, false, IMAGE, 60);
    args.as_object_mut().unwrap().remove("submission_data");
    publish(&queue, &args);
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    // Nothing else reached the site: no hostname, no md5, no upload.
    assert_eq!(st, ["Failed"], "{}", serve.log());
    assert_eq!(site.patches().len(), 1);
    let details = site.last_details();
    assert!(
        details.contains("`submission_data`") && details.contains("`program_data`"),
        "{details}"
    );
    assert!(site.uploads().is_empty());
    assert_eq!(site.get_count("ingestion_program.zip"), 0);

    // A v1.27 scoring task without its scoring program.
    let site = demo_site(704).await;
    let mut args = site.task(SiteVersion::V127, true, IMAGE, 60);
    args.as_object_mut().unwrap().remove("scoring_program_data");
    publish(&queue, &args);
    let st = wait_for_status(&site, &serve, "Failed", 60).await;
    assert_eq!(st, ["Failed"], "{}", serve.log());
    assert!(
        site.last_details().contains("`scoring_program_data`"),
        "{}",
        site.last_details()
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_prediction_upload_keeps_the_prediction_on_the_worker_that_scores_it() {
    let queue = unique_queue("v127-keep");
    let vars = [("COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD", "True")];
    let serve = Serve::start_with("serve-v127-keep", &queue, &vars);
    let site = demo_site(705).await;

    publish(&queue, &site.task(SiteVersion::V127, false, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}",
        serve.log()
    );
    assert!(
        site.upload("prediction_result.zip").is_none(),
        "the prediction was uploaded"
    );
    let kept = serve.host_dir.join("uPK-7_sID-705__ingestion/output");
    assert!(kept.join("predictions.txt").is_file(), "{}", serve.log());

    publish(&queue, &site.task(SiteVersion::V127, true, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Finished", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Finished"),
        "{}\n{}",
        site.last_details(),
        serve.log()
    );
    assert_eq!(site.get_count("prediction_result.zip"), 0);
    assert_eq!(site.scores(), [json!({"accuracy": 1.0})]);
    // The log says the steps must share this worker.
    assert!(
        serve.log().contains("must run on this worker"),
        "{}",
        serve.log()
    );
    serve.stop();

    // A worker that did not run the prediction cannot score it, and says why.
    let queue = unique_queue("v127-keep-other");
    let other = Serve::start_with("serve-v127-keep-other", &queue, &vars);
    let site = demo_site(706).await;
    publish(&queue, &site.task(SiteVersion::V127, true, IMAGE, 60));
    let st = wait_for_status(&site, &other, "Failed", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    let details = site.last_details();
    assert!(
        details.contains("same worker")
            && details.contains("COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD"),
        "{details}"
    );
    other.stop();
}
