//! The consumer against the real RabbitMQ on 127.0.0.1:5672: exact Celery
//! bytes in, decoded jobs out, late acks, redelivery after a lost
//! connection, no double runs, malformed messages dropped, revoke.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use compute_worker::broker::connect::declare_topology;
use compute_worker::broker::{Consumer, Job};
use support::amqp::*;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A handler that reports each job and then waits for a permit (or for
/// the job to be revoked).
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    tx: mpsc::UnboundedSender<Job>,
    release: Arc<Semaphore>,
}

fn recorder() -> (Recorder, mpsc::UnboundedReceiver<Job>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Recorder {
            seen: Arc::default(),
            tx,
            release: Arc::new(Semaphore::new(0)),
        },
        rx,
    )
}

fn start(consumer: &Consumer, rec: &Recorder) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let rec = rec.clone();
    let handler = Arc::new(move |job: Job| {
        let rec = rec.clone();
        async move {
            rec.seen
                .lock()
                .unwrap()
                .push((job.message.task_id.clone(), job.redelivered));
            let cancel = job.cancel.clone();
            rec.tx.send(job).unwrap();
            tokio::select! {
                p = rec.release.acquire() => p.unwrap().forget(),
                _ = cancel.cancelled() => {}
            }
        }
    });
    let c = consumer.clone();
    let s = shutdown.clone();
    let h = tokio::spawn(async move {
        c.run(handler, s).await;
    });
    (shutdown, h)
}

async fn setup(prefix: &str) -> (lapin::Connection, String) {
    let conn = connect().await;
    let q = unique_queue(prefix);
    let ch = conn.create_channel().await.unwrap();
    declare_topology(&ch, &q).await.unwrap();
    (conn, q)
}

async fn next_job(rx: &mut mpsc::UnboundedReceiver<Job>) -> Job {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no job arrived")
        .unwrap()
}

async fn wait_empty(conn: &lapin::Connection, q: &str) {
    for _ in 0..200 {
        if message_count(conn, q).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("queue {q} never drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_decoded_and_acked_only_after_the_handler_returns() {
    let (conn, q) = setup("ack").await;
    let consumer = Consumer::new(consumer_config(&q));
    let (rec, mut rx) = recorder();
    let (shutdown, h) = start(&consumer, &rec);

    let id = publish_task(&conn, &q, "celery5-scoring").await;
    let job = next_job(&mut rx).await;
    assert_eq!(job.message.task_id, id);
    assert_eq!(
        job.message.run_args.secret,
        "0f8fad5b-d9cb-469f-a165-70867728950e"
    );
    assert!(job.message.run_args.is_scoring);
    assert!(job.deadline.is_some(), "soft time limit becomes a deadline");
    assert_eq!(consumer.running(), vec![id.clone()]);

    rec.release.add_permits(1);
    assert!(eventually(WAIT, || consumer.running().is_empty()).await);
    shutdown.cancel();
    h.await.unwrap();
    // Acked: nothing comes back once the consumer's connection is gone.
    assert_eq!(message_count(&conn, &q).await, 0);
    assert_eq!(rec.seen.lock().unwrap().len(), 1);
    delete_queue(&conn, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_job_goes_to_another_worker_when_the_connection_drops() {
    let (conn, q) = setup("redeliver").await;
    let cfg_a = consumer_config(&q);
    let name_a = cfg_a.connection_name.clone();
    let a = Consumer::new(cfg_a);
    let (rec_a, mut rx_a) = recorder();
    let (stop_a, h_a) = start(&a, &rec_a);

    let id = publish_task(&conn, &q, "celery4-prediction").await;
    let job = next_job(&mut rx_a).await;
    assert_eq!(job.message.task_id, id);
    assert!(!job.redelivered);

    // Worker A dies: stop it reconnecting, then cut its connection.
    stop_a.cancel();
    assert_eq!(drop_connection(&name_a), 1);

    let mut cfg_b = consumer_config(&q);
    cfg_b.connection_name = format!("{}-b", cfg_b.connection_name);
    let b = Consumer::new(cfg_b);
    let (rec_b, mut rx_b) = recorder();
    let (stop_b, h_b) = start(&b, &rec_b);
    let again = next_job(&mut rx_b).await;
    assert_eq!(again.message.task_id, id);
    assert!(again.redelivered, "the broker marks it redelivered");
    rec_b.release.add_permits(1);
    wait_empty(&conn, &q).await;
    assert!(eventually(WAIT, || b.running().is_empty()).await);
    stop_b.cancel();
    h_b.await.unwrap();
    rec_a.release.add_permits(1);
    h_a.abort();
    delete_queue(&conn, &q).await;
}

async fn no_second_run_after_reconnect(slots: usize) {
    let (conn, q) = setup(&format!("dup{slots}")).await;
    let mut cfg = consumer_config(&q);
    cfg.slots = slots;
    let name = cfg.connection_name.clone();
    let consumer = Consumer::new(cfg);
    let (rec, mut rx) = recorder();
    let (shutdown, h) = start(&consumer, &rec);

    let id = publish_task(&conn, &q, "celery5-prediction").await;
    let _job = next_job(&mut rx).await;
    // Broker loss while the job runs: the message is requeued and
    // redelivered to this same worker after it reconnects.
    assert_eq!(drop_connection(&name), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rec.seen.lock().unwrap().len(),
        1,
        "the redelivery must not start a second run"
    );
    assert_eq!(consumer.running(), vec![id.clone()]);

    rec.release.add_permits(1);
    wait_empty(&conn, &q).await;
    assert!(eventually(WAIT, || consumer.running().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    h.await.unwrap();
    assert_eq!(
        message_count(&conn, &q).await,
        0,
        "the duplicate was acknowledged"
    );
    assert_eq!(rec.seen.lock().unwrap().len(), 1);
    delete_queue(&conn, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_running_task_is_held_not_rerun_with_two_slots() {
    no_second_run_after_reconnect(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_finished_task_is_dropped_with_one_slot() {
    no_second_run_after_reconnect(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_and_consumption_continues() {
    let (conn, q) = setup("malformed").await;
    let consumer = Consumer::new(consumer_config(&q));
    let (rec, mut rx) = recorder();
    rec.release.add_permits(10);
    let (shutdown, h) = start(&consumer, &rec);

    let good = fixture("celery5-prediction");
    // Broken body.
    publish_raw(
        &conn,
        "",
        &q,
        &good.headers,
        &good.properties,
        b"[[{\"user_pk\": ",
    )
    .await;
    // Another task name.
    let mut other = good.headers.clone();
    other.insert("task".into(), "celery.ping".into());
    publish_raw(
        &conn,
        "",
        &q,
        &other,
        &good.properties,
        good.body.as_bytes(),
    )
    .await;
    // Not a Celery message at all.
    publish_raw(
        &conn,
        "",
        &q,
        &Default::default(),
        &serde_json::json!({}),
        b"hello",
    )
    .await;
    // run_args missing required keys.
    publish_raw(
        &conn,
        "",
        &q,
        &good.headers,
        &good.properties,
        b"[[{\"id\": 1}], {}, {}]",
    )
    .await;
    let id = publish_task(&conn, &q, "celery4-scoring").await;

    let job = next_job(&mut rx).await;
    assert_eq!(job.message.task_id, id);
    wait_empty(&conn, &q).await;
    assert!(eventually(WAIT, || consumer.running().is_empty()).await);
    shutdown.cancel();
    h.await.unwrap();
    assert_eq!(message_count(&conn, &q).await, 0);
    assert_eq!(rec.seen.lock().unwrap().len(), 1);
    delete_queue(&conn, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cancels_the_running_job_and_drops_later_deliveries() {
    let (conn, q) = setup("revoke").await;
    let consumer = Consumer::new(consumer_config(&q));
    let mut revocations = consumer.revocations();
    let (rec, mut rx) = recorder();
    let (shutdown, h) = start(&consumer, &rec);
    // Wait for the pidbox queue to be bound (the consumer is connected).
    let running_id = publish_task(&conn, &q, "celery5-prediction").await;
    let job = next_job(&mut rx).await;
    assert_eq!(job.message.task_id, running_id);

    publish_revoke(&conn, &running_id).await;
    tokio::time::timeout(WAIT, job.cancel.cancelled())
        .await
        .expect("running job was not cancelled");
    let r = tokio::time::timeout(WAIT, revocations.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.task_id, running_id);
    assert!(r.terminate && r.was_running);
    assert!(eventually(WAIT, || consumer.running().is_empty()).await);

    // A revoke that arrives before its task: the task is never run.
    let later = uuid::Uuid::new_v4().to_string();
    publish_revoke(&conn, &later).await;
    let r = tokio::time::timeout(WAIT, revocations.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!r.was_running);
    assert!(consumer.is_revoked(&later));
    let mut c = fixture("celery4-prediction");
    c.headers.insert("id".into(), later.clone().into());
    publish_raw(&conn, "", &q, &c.headers, &c.properties, c.body.as_bytes()).await;
    wait_empty(&conn, &q).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    h.await.unwrap();
    assert_eq!(message_count(&conn, &q).await, 0);
    assert_eq!(
        rec.seen.lock().unwrap().len(),
        1,
        "the revoked task must not run"
    );
    delete_queue(&conn, &q).await;
}
