//! The broker over TLS, against the real RabbitMQ's TLS listener on
//! 127.0.0.1:5671 (scripts/dev-setup.sh: a certificate for 127.0.0.1
//! signed by a test CA): `BROKER_USE_SSL` (not verified, as Codabench's
//! worker), `amqps://`, `--verify-broker-tls` with and without the CA, and
//! `doctor`'s broker row. Tasks are published by the real Celery over the
//! plain listener of the same broker.

mod e2e;
mod sandbox_env;
mod support;

use std::time::{Duration, Instant};

use e2e::*;
use support::amqp::{connections_over_tls, unique_queue};
use support::site::FakeSite;

/// The TLS listener (`BROKER_TLS_URL` overrides it).
fn tls_url(scheme: &str) -> String {
    std::env::var("BROKER_TLS_URL")
        .unwrap_or_else(|_| "pyamqp://guest:guest@127.0.0.1:5671//".into())
        .replacen("pyamqp://", &format!("{scheme}://"), 1)
}

/// The CA that signed the listener's certificate.
fn test_ca() -> String {
    std::env::var("BROKER_TLS_CA_FILE").unwrap_or_else(|_| "/etc/rabbitmq/tls/ca.pem".into())
}

/// `serve` with `vars` runs a quick job published by Celery to the end,
/// over a connection RabbitMQ sees as TLS.
async fn a_job_completes_with(name: &str, id: u64, vars: &[(&str, &str)]) {
    let queue = unique_queue(name);
    let serve = Serve::start_with(name, &queue, vars);
    let site = FakeSite::start(id, 7).await;
    let args = submission_only_args(
        &site,
        &format!("{name}-submission"),
        "sh -c 'echo odd > /app/output/predictions.txt'",
        60,
    );
    publish(&queue, &args);
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(st, ["Running", "Preparing", "Scoring"], "{}", serve.log());
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    assert_eq!(zip_file(&up.body, "predictions.txt"), "odd\n");
    let conn = format!(
        "compute-worker@{}:{}",
        compute_worker::hostname::hostname(),
        serve.child.id()
    );
    assert_eq!(connections_over_tls(&conn), [true], "{}", serve.log());
    assert!(
        serve.log().contains("amqps://guest@127.0.0.1:5671"),
        "{}",
        serve.log()
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_use_ssl_consumes_over_tls_without_verifying() {
    let url = tls_url("pyamqp");
    a_job_completes_with(
        "tls-usessl",
        601,
        &[("BROKER_URL", &url), ("BROKER_USE_SSL", "true")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_private_ca_verifies_and_consumes() {
    // amqps:// means TLS with no BROKER_USE_SSL; the CA file turns
    // verification on.
    let url = tls_url("amqps");
    let ca = test_ca();
    a_job_completes_with(
        "tls-ca",
        602,
        &[("BROKER_URL", &url), ("COMPUTE_WORKER_BROKER_CA_FILE", &ca)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_broker_tls_refuses_a_certificate_it_cannot_trust() {
    let queue = unique_queue("tls-verify");
    let url = tls_url("pyamqp");
    let serve = Serve::start_with(
        "tls-verify",
        &queue,
        &[
            ("BROKER_URL", &url),
            ("BROKER_USE_SSL", "true"),
            ("COMPUTE_WORKER_VERIFY_BROKER_TLS", "true"),
        ],
    );
    let site = FakeSite::start(603, 7).await;
    let args = submission_only_args(&site, "tls-verify-submission", "true", 60);
    publish(&queue, &args);
    // It keeps refusing (retrying with backoff) and never takes the job.
    let t = Instant::now();
    while serve
        .log()
        .matches("certificate verification failed")
        .count()
        < 2
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no verification error:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = serve.log();
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(log.contains("--broker-ca-file"), "the fix is named: {log}");
    assert!(!log.contains("connected to broker"), "{log}");
    assert!(site.statuses().is_empty());
    let conn = support::amqp::connect().await;
    assert_eq!(support::amqp::message_count(&conn, &queue).await, 1);
    serve.stop();
    support::amqp::delete_queue(&conn, &queue).await;
}

/// `doctor --json`'s broker row (status, detail, fix) with `vars` and `args`.
fn doctor_broker_row(vars: &[(&str, &str)], args: &[&str]) -> (String, String, String) {
    let e = sandbox_env::env();
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let out = e
        .command(&all)
        .env_remove("BROKER_USE_SSL")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    sandbox_env::doctor_rows(&out)["broker"].clone()
}

#[test]
fn doctor_checks_the_broker_over_tls() {
    let url = tls_url("pyamqp");
    let ssl = [("BROKER_URL", url.as_str()), ("BROKER_USE_SSL", "1")];
    let (status, detail, _) = doctor_broker_row(&ssl, &[]);
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.contains("amqps://guest@127.0.0.1:5671"), "{detail}");

    let (status, detail, fix) = doctor_broker_row(&ssl, &["--verify-broker-tls"]);
    assert_eq!(status, "fail", "{detail}");
    assert!(
        detail.contains("certificate verification failed"),
        "{detail}"
    );
    assert!(fix.contains("--broker-ca-file"), "{fix}");

    let ca = test_ca();
    let amqps = tls_url("amqps");
    let (status, detail, _) = doctor_broker_row(
        &[
            ("BROKER_URL", &amqps),
            ("COMPUTE_WORKER_BROKER_CA_FILE", &ca),
        ],
        &[],
    );
    assert_eq!(status, "ok", "{detail}");
}

#[test]
fn a_broker_ca_file_that_is_not_a_certificate_is_named() {
    let url = tls_url("amqps");
    let (status, detail, fix) = doctor_broker_row(
        &[
            ("BROKER_URL", &url),
            ("COMPUTE_WORKER_BROKER_CA_FILE", "/etc/hostname"),
        ],
        &[],
    );
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("/etc/hostname"), "{detail}");
    assert!(fix.contains("PEM file"), "{fix}");
}
