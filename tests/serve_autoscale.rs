//! `serve --exit-after N` and `serve --exit-when-idle DURATION`: the worker
//! finishes what it holds, takes nothing more (a task it did not start
//! stays in the queue, intact) and exits 0. Through the real binary, the
//! real RabbitMQ and the fake site.

mod e2e;
mod sandbox_env;
mod support;

use std::time::{Duration, Instant};

use e2e::*;
use support::amqp::unique_queue;
use support::site::FakeSite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_one_runs_one_job_and_leaves_the_next_in_the_queue() {
    let queue = unique_queue("e2e-exit-after");
    let mut serve = Serve::start_with(
        "serve-exit-after",
        &queue,
        &[("COMPUTE_WORKER_EXIT_AFTER", "1")],
    );
    let first = FakeSite::start(531, 7).await;
    let second = FakeSite::start(532, 7).await;
    publish_sleeper(&serve, &queue, &first, "exit-after-a", "2.0531").await;
    // Published while the first runs: the worker must not take it.
    let command = "sh -c 'echo even > /app/output/predictions.txt'";
    publish(
        &queue,
        &submission_only_args(&second, "exit-after-b", command, 60),
    );
    let status = serve.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", serve.log());
    assert_eq!(
        first.statuses().last().map(String::as_str),
        Some("Scoring"),
        "{}",
        serve.log()
    );
    assert!(second.statuses().is_empty(), "{:?}", second.statuses());
    assert!(serve.log().contains("--exit-after"), "{}", serve.log());
    let conn = support::amqp::connect().await;
    assert_eq!(
        support::amqp::message_count(&conn, &queue).await,
        1,
        "the second task is back in the queue\n{}",
        serve.log()
    );

    // Another worker picks it up intact and runs it.
    let other = Serve::start("serve-exit-after-b", &queue);
    let st = wait_for_status(&second, &other, "Scoring", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    let up = second
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    assert_eq!(zip_file(&up.body, "predictions.txt"), "even\n");
    other.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_exits_after_the_idle_time() {
    let queue = unique_queue("e2e-exit-idle");
    let mut serve = Serve::start_with(
        "serve-exit-idle",
        &queue,
        &[("COMPUTE_WORKER_EXIT_WHEN_IDLE", "2s")],
    );
    let t = Instant::now();
    let status = serve.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    assert!(status.success(), "{status:?}\n{}", serve.log());
    assert!(took >= Duration::from_secs(2), "exited after {took:?}");
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    assert!(serve.log().contains("--exit-when-idle"), "{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_waits_for_a_job_longer_than_the_idle_time() {
    let queue = unique_queue("e2e-exit-idle-job");
    let site = FakeSite::start(533, 7).await;
    // In the queue before the worker starts: its first delivery.
    let command = "sh -c 'sleep 4.0533; echo odd > /app/output/predictions.txt'";
    publish(
        &queue,
        &submission_only_args(&site, "exit-idle-job", command, 60),
    );
    let mut serve = Serve::start_with(
        "serve-exit-idle-job",
        &queue,
        &[("COMPUTE_WORKER_EXIT_WHEN_IDLE", "2s")],
    );
    serve.wait_for_process("sleep 4.0533").await;
    // The job outlives the idle time; the worker must wait for it and then
    // be idle for the whole idle time again.
    let st = wait_for_status(&site, &serve, "Scoring", 60).await;
    let done = Instant::now();
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "exited during the job\n{}",
        serve.log()
    );
    let status = serve.wait_exit(Duration::from_secs(30));
    let idle = done.elapsed();
    assert!(status.success(), "{status:?}\n{}", serve.log());
    assert!(
        idle >= Duration::from_millis(1500),
        "exited {idle:?} after the job: the idle time counts from the job's end\n{}",
        serve.log()
    );
}
