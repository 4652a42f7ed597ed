//! Real Celery 5.6.2 (Python, `pip install celery==5.6.2 kombu==5.6.2`)
//! publishes a task and a revoke exactly as a Codabench site does; the
//! consumer decodes both. Celery also declares the queue itself, so a
//! topology mismatch (e.g. x-max-priority type) would fail its publish.

mod support;

use std::sync::Arc;
use std::time::Duration;

use compute_worker::broker::{Consumer, Job};
use support::amqp::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_and_revoke_published_by_real_celery() {
    let conn = connect().await;
    let q = unique_queue("live");
    let consumer = Consumer::new(consumer_config(&q));
    let mut revocations = consumer.revocations();
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let handler = Arc::new(move |job: Job| {
        let tx = tx.clone();
        async move {
            let cancel = job.cancel.clone();
            tx.send(job).unwrap();
            cancel.cancelled().await;
        }
    });
    let shutdown = CancellationToken::new();
    let (c, s) = (consumer.clone(), shutdown.clone());
    let h = tokio::spawn(async move { c.run(handler, s).await });
    // Let the consumer declare its topology first; Celery then redeclares it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let run_args = serde_json::json!({
        "user_pk": 3, "submissions_api_url": "http://127.0.0.1:1/api",
        "secret": "placeholder", "docker_image": "python:3.11",
        "execution_time_limit": 60, "id": 99, "is_scoring": true,
        "prediction_result": "http://x/p", "scoring_result": "http://x/s",
        "ingestion_only_during_scoring": false, "program_data": "http://x/prog",
        "scoring_stdout": "http://x/o", "scoring_stderr": "http://x/e",
        "scoring_ingestion_stdout": "http://x/io", "scoring_ingestion_stderr": "http://x/ie"
    });
    let secret = "7d444840-9dc0-11d1-b245-5ffdce74fad2";
    let task_id = tokio::task::spawn_blocking({
        let q = q.clone();
        move || celery_tool(&["publish", &q, &run_args.to_string(), "1260", "10", secret])
    })
    .await
    .unwrap();

    let job = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.message.task_id, task_id);
    assert_eq!(
        job.message.run_args.secret, secret,
        "typed UUID secret normalized"
    );
    assert_eq!(job.message.soft_time_limit, Some(Duration::from_secs(1260)));
    assert_eq!(job.message.run_args.id, 99);

    let id = task_id.clone();
    tokio::task::spawn_blocking(move || celery_tool(&["revoke", &id]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), job.cancel.cancelled())
        .await
        .expect("revoke from celery did not cancel the job");
    let r = revocations.recv().await.unwrap();
    assert_eq!(r.task_id, task_id);
    assert!(r.terminate);

    assert!(eventually(Duration::from_secs(20), || consumer.running().is_empty()).await);
    shutdown.cancel();
    h.await.unwrap();
    assert_eq!(message_count(&conn, &q).await, 0);
    delete_queue(&conn, &q).await;
}
