//! The site client against the fake Codabench site (tests/support/site.rs).

mod support;

use std::io::Write;
use std::time::Duration;

use compute_worker::site::live::{live_url, LiveConfig, LiveKind, LiveLog};
use compute_worker::site::{
    FailureType, Retry, SiteClient, SiteError, Status, SubmissionUpdate, UploadKind, UrlRewrite,
};
use support::site::{FakeSite, SECRET};

fn zip_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

async fn setup() -> (FakeSite, SiteClient) {
    let site = FakeSite::start(1234, 7).await;
    let client = SiteClient::new(&site.api_url(), 1234, 7, SECRET)
        .unwrap()
        .with_retry(Retry {
            attempts: 3,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        });
    (site, client)
}

#[tokio::test]
async fn status_patches_are_forms_with_secret_and_no_nulls() {
    let (site, c) = setup().await;
    c.update(&SubmissionUpdate::running_on("worker-1", false))
        .await
        .unwrap();
    c.update(&SubmissionUpdate::status(Status::Preparing))
        .await
        .unwrap();
    c.update(&SubmissionUpdate {
        md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    c.update(&SubmissionUpdate::failure_report(
        FailureType::ExecutionTimeLimitExceeded,
        "Execution Time Limit exceeded. Limit was 600 seconds",
        true,
    ))
    .await
    .unwrap();
    c.update(&SubmissionUpdate::failed(
        "Execution Time Limit exceeded. Limit was 600 seconds",
    ))
    .await
    .unwrap();

    let p = site.patches();
    assert_eq!(p.len(), 5);
    assert!(p.iter().all(|p| p
        .content_type
        .starts_with("application/x-www-form-urlencoded")));
    assert!(p
        .iter()
        .all(|p| p.submission_id == 1234 && p.get("secret") == Some(SECRET)));
    assert_eq!(
        p[0].fields,
        vec![
            ("status".to_string(), "Running".to_string()),
            (
                "status_details".to_string(),
                "ingestion_hostname-worker-1".to_string()
            ),
            ("secret".to_string(), SECRET.to_string()),
        ]
    );
    assert_eq!(
        p[1].fields.len(),
        2,
        "no status_details key at all when it is null"
    );
    assert_eq!(p[2].get("md5"), Some("d41d8cd98f00b204e9800998ecf8427e"));
    assert_eq!(p[3].get("type"), Some("Execution_Time_Limit_Exceeded"));
    assert_eq!(p[3].get("is_scoring"), Some("True"));
    assert_eq!(site.statuses(), vec!["Running", "Preparing", "Failed"]);

    c.update(&SubmissionUpdate::running_on("worker-1", true))
        .await
        .unwrap();
    assert_eq!(
        site.patches()[5].get("status_details"),
        Some("scoring_hostname-worker-1")
    );
}

#[tokio::test]
async fn only_http_200_is_success() {
    let (site, c) = setup().await;
    site.fail_status("Scoring", 500, 1);
    let err = c
        .update(&SubmissionUpdate::status(Status::Scoring))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SiteError::Status { status: 500, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Scoring"), "{err}");
    // Not retried behind our back (the site acts on Scoring).
    assert_eq!(site.rejected_patches().len(), 1);
    c.update(&SubmissionUpdate::status(Status::Scoring))
        .await
        .unwrap();
    assert_eq!(site.statuses(), vec!["Scoring"]);

    let wrong = SiteClient::new(
        &site.api_url(),
        1234,
        7,
        "7d444840-9dc0-11d1-b245-5ffdce74fad2",
    )
    .unwrap();
    let err = wrong
        .update(&SubmissionUpdate::status(Status::Running))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SiteError::Status { status: 403, .. }),
        "{err}"
    );
    assert_eq!(site.statuses(), vec!["Scoring"]);
}

#[tokio::test]
async fn scores_are_posted_as_json() {
    let (site, c) = setup().await;
    let scores = serde_json::json!({"accuracy": 0.93, "duration": 1});
    c.post_scores(&scores).await.unwrap();
    assert_eq!(site.scores(), vec![scores]);
}

#[tokio::test]
async fn presigned_puts_carry_the_signed_content_type_and_azure_headers() {
    let (site, c) = setup().await;
    let zip = zip_bytes(&[("scores.json", "{}")]);
    c.put_bytes(
        &site.put_url("prediction_result.zip", "application/zip"),
        zip.clone(),
        UploadKind::Zip,
    )
    .await
    .unwrap();
    c.put_bytes(
        &site.put_url("prediction_stdout.txt", "application/zip"),
        b"hello\n".to_vec(),
        UploadKind::Zip,
    )
    .await
    .unwrap();
    c.put_bytes(
        &site.put_url("detailed_results.html", "text/html"),
        b"<p>hi</p>".to_vec(),
        UploadKind::Html,
    )
    .await
    .unwrap();

    let u = site.upload("prediction_result.zip").unwrap();
    assert_eq!(u.body, zip);
    assert_eq!(u.content_type, "application/zip");
    assert_eq!(u.headers["x-ms-blob-type"], "BlockBlob");
    assert_eq!(u.headers["x-ms-version"], "2018-03-28");
    assert_eq!(
        site.upload("prediction_stdout.txt").unwrap().content_type,
        "application/zip"
    );
    assert_eq!(
        site.upload("detailed_results.html").unwrap().content_type,
        "text/html"
    );

    // A URL signed for text/html refuses a zip upload: 403, not retried.
    let err = c
        .put_bytes(
            &site.put_url("detailed_results.html", "text/html"),
            zip,
            UploadKind::Zip,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, SiteError::Status { status: 403, .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("X-Amz-Signature"),
        "signatures stay out of messages: {err}"
    );
}

#[tokio::test]
async fn bundle_url_rewrite_applies_to_storage_only() {
    let (site, c) = setup().await;
    let c = c.with_rewrite(UrlRewrite::parse(&format!(
        "http://minio.invalid:9000|{}",
        site.url()
    )));
    site.add_bundle("input_data.zip", zip_bytes(&[("a.csv", "1,2")]));
    let dir = tempfile::tempdir().unwrap();
    let get = site
        .get_url("input_data.zip")
        .replace(&site.url(), "http://minio.invalid:9000");
    c.download_bundle(&get, &dir.path().join("in.zip"))
        .await
        .unwrap();
    let put = site
        .put_url("r.zip", "application/zip")
        .replace(&site.url(), "http://minio.invalid:9000");
    c.put_bytes(&put, b"x".to_vec(), UploadKind::Zip)
        .await
        .unwrap();
    assert!(site.upload("r.zip").is_some());
}

#[tokio::test]
async fn bundle_download_retries_server_errors_and_checks_digests() {
    let (site, c) = setup().await;
    let zip = zip_bytes(&[("metadata.yaml", "command: python run.py\n")]);
    site.add_bundle("submission.zip", zip.clone());
    site.fail_get("submission.zip", 503, 2);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("submission.zip");
    let d = c
        .download_bundle(&site.get_url("submission.zip"), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), zip);
    assert_eq!(d.md5, hex::encode(md5::Md5::digest(&zip)));
    assert_eq!(site.get_count("submission.zip"), 3);

    site.add_bundle_with_wrong_etag("corrupt.zip", zip);
    let err = c
        .download_bundle(&site.get_url("corrupt.zip"), &dest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("MD5 mismatch"), "{err}");
    assert_eq!(
        site.get_count("corrupt.zip"),
        3,
        "a digest mismatch is retried"
    );
}

use md5::Digest;

#[tokio::test]
async fn missing_bundle_and_bad_zip_fail_fast() {
    let (site, c) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("b.zip");
    let err = c
        .download_bundle(&site.get_url("nope.zip"), &dest)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("Problem fetching http://"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dest.display().to_string()),
        "{err}"
    );
    assert_eq!(site.get_count("nope.zip"), 1);

    site.add_bundle("empty.zip", Vec::new());
    let err = c
        .download_bundle(&site.get_url("empty.zip"), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Bad or empty zip file");
    assert_eq!(site.get_count("empty.zip"), 1);
}

#[tokio::test]
async fn live_logs_reach_the_site_in_order_with_the_right_kinds() {
    let (site, _c) = setup().await;
    let url = |k| live_url(&site.api_url(), 7, 1234, SECRET, k).unwrap();
    assert_eq!(
        url(LiveKind::Program),
        format!(
            "ws://{}/submission_input/7/1234/{SECRET}/?kind=program",
            site.url().trim_start_matches("http://")
        )
    );

    let program = LiveLog::start(
        url(LiveKind::Program),
        LiveKind::Program,
        LiveConfig::default(),
    );
    let errors = LiveLog::start(
        url(LiveKind::ErrorLogs),
        LiveKind::ErrorLogs,
        LiveConfig::default(),
    );
    let detailed = LiveLog::start(
        url(LiveKind::DetailedResults),
        LiveKind::DetailedResults,
        LiveConfig::default(),
    );
    for i in 0..50 {
        program.send(&format!("line {i}"));
    }
    errors.send("Execution Time Limit exceeded. Limit was 600 seconds");
    detailed.send("");
    program.close().await;
    errors.close().await;
    detailed.close().await;

    let frames = site.ws_frames_when(|f| f.len() >= 52).await;
    let prog: Vec<_> = frames
        .iter()
        .filter(|f| f.query_kind.as_deref() == Some("program"))
        .collect();
    assert_eq!(prog.len(), 50);
    for (i, f) in prog.iter().enumerate() {
        assert_eq!(
            f.frame,
            serde_json::json!({"kind": "program", "message": format!("line {i}")})
        );
    }
    let err: Vec<_> = frames
        .iter()
        .filter(|f| f.query_kind.as_deref() == Some("error_logs"))
        .collect();
    assert_eq!(
        err[0].frame,
        serde_json::json!({"kind": "stderr", "message": "Execution Time Limit exceeded. Limit was 600 seconds"})
    );
    let det: Vec<_> = frames
        .iter()
        .filter(|f| f.query_kind.as_deref() == Some("detailed_results"))
        .collect();
    assert_eq!(
        det[0].frame,
        serde_json::json!({"kind": "detailed_result_update"})
    );
}

#[tokio::test]
async fn a_slow_site_loses_the_oldest_lines_with_a_marker_not_the_job() {
    let (site, _c) = setup().await;
    site.slow_websocket(20);
    let cfg = LiveConfig {
        buffer: 10,
        ..LiveConfig::default()
    };
    let log = LiveLog::start(
        live_url(&site.api_url(), 7, 1234, SECRET, LiveKind::Ingestion).unwrap(),
        LiveKind::Ingestion,
        cfg,
    );
    for i in 0..500 {
        log.send(&format!("line {i}"));
    }
    assert!(log.dropped() > 0);
    log.close().await;
    let frames = site
        .ws_frames_when(|f| f.last().is_some_and(|l| l.frame["message"] == "line 499"))
        .await;
    let messages: Vec<String> = frames
        .iter()
        .map(|f| f.frame["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("were dropped")),
        "{messages:?}"
    );
    assert_eq!(
        messages.last().unwrap(),
        "line 499",
        "the newest lines survive"
    );
    assert!(frames.len() < 500);
}

#[tokio::test]
async fn live_log_to_an_unreachable_site_does_not_hang_the_job() {
    let cfg = LiveConfig {
        flush_timeout: Duration::from_millis(500),
        ..LiveConfig::default()
    };
    let log = LiveLog::start(
        "ws://127.0.0.1:9/submission_input/1/2/s/?kind=program".into(),
        LiveKind::Program,
        cfg,
    );
    log.send("nobody listens");
    tokio::time::timeout(Duration::from_secs(5), log.close())
        .await
        .expect("close must give up");
}

/// What the viewer gets when the site is away while lines are printed:
/// once it is back, the newest lines the bound kept, after a marker saying
/// how many older ones were dropped.
#[tokio::test]
async fn lines_sent_while_the_site_is_away_arrive_when_it_is_back_within_the_bound() {
    for (buffer, buffer_bytes) in [(5, 1 << 20), (1000, 5 * 40)] {
        let (site, _c) = setup().await;
        site.refuse_websocket(2);
        let cfg = LiveConfig {
            buffer,
            buffer_bytes,
            reconnect_min: Duration::from_millis(50),
            ..LiveConfig::default()
        };
        let log = LiveLog::start(
            live_url(&site.api_url(), 7, 1234, SECRET, LiveKind::Program).unwrap(),
            LiveKind::Program,
            cfg,
        );
        for i in 10..30 {
            log.send(&format!("line {i}"));
        }
        assert_eq!(log.dropped(), 15, "buffer {buffer}, {buffer_bytes} bytes");
        log.close().await;
        let messages: Vec<String> = site
            .ws_frames()
            .iter()
            .map(|f| f.frame["message"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "[compute-worker] 15 log messages were dropped here because the site was not keeping up",
                "line 25",
                "line 26",
                "line 27",
                "line 28",
                "line 29"
            ]
        );
        assert_eq!(site.ws_connections(), 1);
    }
}
