//! Operators' tools see a compute-worker like any Celery worker: the real
//! Celery 5.6.2 client's `inspect ping/active/stats/registered` get
//! Celery-shaped answers, `celery events`' receiver gets `worker-online`,
//! heartbeats every 2 s and `worker-offline`, and Codabench's worker panel
//! logic, run against RabbitMQ's own management API, lists the worker as
//! available when idle, busy while a job runs, and drops it once stopped.
//!
//! Needs RabbitMQ with the `rabbitmq_management` plugin on 127.0.0.1:15672
//! (guest/guest) and python3 with celery 5.6.2 (scripts/dev-setup.sh).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use compute_worker::broker::{Consumer, ConsumerConfig, Job};
use serde_json::Value;
use support::amqp::*;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// A consumer on a fresh queue whose jobs wait for `release`.
struct Worker {
    queue: String,
    node: String,
    consumer: Consumer,
    jobs: mpsc::UnboundedReceiver<Job>,
    release: Arc<Notify>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

fn start_worker(queue: String) -> Worker {
    start_with(consumer_config(&queue))
}

/// Jobs end when released or revoked.
fn start_with(cfg: ConsumerConfig) -> Worker {
    let queue = cfg.queue.clone();
    let node = cfg.node_name.clone();
    let consumer = Consumer::new(cfg);
    let (tx, jobs) = mpsc::unbounded_channel::<Job>();
    let release = Arc::new(Notify::new());
    let handler = {
        let release = release.clone();
        Arc::new(move |job: Job| {
            let (tx, release) = (tx.clone(), release.clone());
            async move {
                let cancel = job.cancel.clone();
                tx.send(job).unwrap();
                tokio::select! {
                    _ = release.notified() => {}
                    _ = cancel.cancelled() => {}
                }
            }
        })
    };
    let shutdown = CancellationToken::new();
    let (c, s) = (consumer.clone(), shutdown.clone());
    let handle = tokio::spawn(async move {
        c.run(handler, s).await;
    });
    Worker {
        queue,
        node,
        consumer,
        jobs,
        release,
        shutdown,
        handle,
    }
}

async fn inspect(method: &str, node: &str) -> Value {
    let (m, n) = (method.to_string(), node.to_string());
    let out = tokio::task::spawn_blocking(move || celery_tool(&["inspect", &m, &n]))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.get(node)
        .cloned()
        .unwrap_or_else(|| panic!("no {method} reply from {node}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_inspect_and_events_see_the_worker() {
    let conn = connect().await;
    let queue = unique_queue("mon");
    let node = consumer_config(&queue).node_name;
    // Celery's own event receiver, bound before the worker starts.
    let mut receiver = celery_tool_command()
        .args(["events", &node, "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    let events = std::thread::spawn(move || {
        lines
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
            .collect::<Vec<_>>()
    });

    let mut w = start_worker(queue);

    // `celery inspect ping`, the command line an operator types.
    let ping = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..20 {
                let out = Command::new("celery")
                    .args([
                        "-b",
                        &broker_url(),
                        "inspect",
                        "ping",
                        "-d",
                        &node,
                        "-t",
                        "3",
                    ])
                    .output()
                    .expect("the celery command (pip install celery==5.6.2)");
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                if out.status.success() {
                    return text;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            panic!("celery inspect ping never got an answer from {node}");
        })
        .await
        .unwrap()
    };
    assert!(
        ping.contains(&node) && ping.contains("pong") && ping.contains("1 node online"),
        "{ping}"
    );

    assert_eq!(
        inspect("registered", &node).await,
        serde_json::json!(["compute_worker_run"])
    );
    let stats = inspect("stats", &node).await;
    assert_eq!(
        stats["pid"],
        serde_json::json!(std::process::id()),
        "{stats}"
    );
    assert_eq!(stats["pool"]["max-concurrency"], 1, "{stats}");
    assert_eq!(stats["total"], serde_json::json!({}), "{stats}");
    assert!(stats["rusage"]["maxrss"].as_i64().unwrap() > 0, "{stats}");
    assert_eq!(inspect("active", &node).await, serde_json::json!([]));

    // A job runs: `inspect active` shows it, without its secret.
    let task_id = publish_task(&conn, &w.queue, "celery5-prediction").await;
    let job = tokio::time::timeout(Duration::from_secs(20), w.jobs.recv())
        .await
        .expect("the job did not start")
        .unwrap();
    assert_eq!(job.message.task_id, task_id);
    let active = inspect("active", &node).await;
    let a = &active[0];
    assert_eq!(a["id"], task_id.as_str(), "{active}");
    assert_eq!(a["name"], "compute_worker_run");
    assert_eq!(a["hostname"], node.as_str());
    assert_eq!(a["acknowledged"], false);
    assert_eq!(a["delivery_info"]["routing_key"], w.queue.as_str());
    assert_eq!(a["args"][0]["id"], job.message.run_args.id);
    assert_eq!(a["args"][0]["secret"], "<redacted>", "{active}");
    assert!(!active.to_string().contains(&job.message.run_args.secret));
    // Let two heartbeats go out while it runs.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    w.release.notify_one();
    assert!(eventually(Duration::from_secs(20), || w.consumer.running().is_empty()).await);
    let stats = inspect("stats", &node).await;
    assert_eq!(
        stats["total"],
        serde_json::json!({"compute_worker_run": 1}),
        "{stats}"
    );

    w.shutdown.cancel();
    w.handle.await.unwrap();
    let events = tokio::task::spawn_blocking(move || events.join().unwrap())
        .await
        .unwrap();
    let _ = receiver.wait();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"worker-online"), "{types:?}");
    assert_eq!(types.last(), Some(&"worker-offline"), "{types:?}");
    let beats: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "worker-heartbeat")
        .collect();
    assert!(beats.len() >= 3, "{types:?}");
    assert!(
        beats.iter().any(|b| b["active"] == 1),
        "no heartbeat counted the running job: {events:?}"
    );
    for e in &events {
        for k in [
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "freq",
            "sw_ident",
            "sw_ver",
            "sw_sys",
            "active",
            "processed",
            "loadavg",
            "timestamp",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
        assert_eq!(e["freq"], 2.0);
        assert_eq!(e["pid"], serde_json::json!(std::process::id()));
    }
    assert_eq!(events.last().unwrap()["processed"], 1);
    delete_queue(&conn, &w.queue).await;
}

// ---- Codabench's worker panel (protocol v1.27 doc §12, steps 3-4) ----

async fn mgmt(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:15672/api/{path}"))
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("RabbitMQ management API on 127.0.0.1:15672 (rabbitmq-plugins enable rabbitmq_management)")
        .json()
        .await
        .unwrap()
}

/// The panel's view of `node` in vhost `/`: `None` when not listed, else
/// `available`, `busy` or `unavailable`.
async fn panel(node: &str) -> Option<String> {
    let name = format!("{node}.celery.pidbox");
    // As the site polls: every vhost's queues, consumers and channels.
    let queues = mgmt("queues").await;
    queues.as_array().unwrap().iter().find(|q| {
        q["vhost"] == "/" && q["name"] == name.as_str() && name.starts_with("compute-worker")
    })?;
    let consumers = mgmt("consumers").await;
    let conns: Vec<String> = consumers
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["queue"]["vhost"] == "/" && c["queue"]["name"] == name.as_str() && c["active"] == true
        })
        .filter_map(|c| c["channel_details"]["connection_name"].as_str())
        .map(str::to_string)
        .collect();
    if conns.is_empty() {
        return Some("unavailable".into());
    }
    let channels = mgmt("channels").await;
    let busy = channels.as_array().unwrap().iter().any(|ch| {
        ch["connection_details"]["name"]
            .as_str()
            .is_some_and(|n| conns.iter().any(|c| c == n))
            && ch["messages_unacknowledged"].as_u64().unwrap_or(0) > 0
    });
    Some(if busy { "busy" } else { "available" }.into())
}

async fn panel_shows(node: &str, want: Option<&str>) -> Option<String> {
    let mut seen = None;
    for _ in 0..60 {
        seen = panel(node).await;
        if seen.as_deref() == want {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codabench_panel_sees_idle_available_running_busy_and_stopped_gone() {
    let conn = connect().await;
    let mut w = start_worker(unique_queue("panel"));
    let node = w.node.clone();
    let seen = panel_shows(&node, Some("available")).await;
    assert_eq!(seen.as_deref(), Some("available"), "idle worker");

    // The mailbox queue as Celery declares it, and one connection for all.
    let name = format!("{node}.celery.pidbox");
    let q = mgmt(&format!("queues/%2F/{}", urlencode(&name))).await;
    assert_eq!(q["durable"], false, "{q}");
    assert_eq!(q["auto_delete"], true, "{q}");
    assert_eq!(q["exclusive"], false, "{q}");
    assert_eq!(q["arguments"]["x-expires"], 10000, "{q}");
    assert_eq!(q["arguments"]["x-message-ttl"], 300000, "{q}");
    let bindings = mgmt(&format!("queues/%2F/{}/bindings", urlencode(&name))).await;
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "celery.pidbox"),
        "{bindings}"
    );
    // The management plugin fills a new channel's details in a later stats
    // round: wait until both consumers carry their connection's name.
    let mut connections = Vec::new();
    for _ in 0..60 {
        let consumers = mgmt("consumers/%2F").await;
        connections = consumers
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["queue"]["name"] == name.as_str() || c["queue"]["name"] == w.queue.as_str()
            })
            .map(|c| c["channel_details"]["connection_name"].clone())
            .collect::<Vec<Value>>();
        if connections.len() == 2 && connections.iter().all(Value::is_string) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(connections.len(), 2, "{connections:?}");
    assert!(connections[0].is_string(), "{connections:?}");
    assert_eq!(
        connections[0], connections[1],
        "the task consumer and the mailbox must share one connection"
    );

    publish_task(&conn, &w.queue, "celery5-prediction").await;
    tokio::time::timeout(Duration::from_secs(20), w.jobs.recv())
        .await
        .expect("the job did not start")
        .unwrap();
    let seen = panel_shows(&node, Some("busy")).await;
    assert_eq!(seen.as_deref(), Some("busy"), "worker running a job");

    w.release.notify_one();
    let seen = panel_shows(&node, Some("available")).await;
    assert_eq!(seen.as_deref(), Some("available"), "after the job");

    w.shutdown.cancel();
    w.handle.await.unwrap();
    let seen = panel_shows(&node, None).await;
    assert_eq!(seen, None, "a stopped worker must leave the panel");
    delete_queue(&conn, &w.queue).await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Two workers given one node name (two on one host): the second uses a
/// private mailbox, so neither loses revokes to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_one_node_name_both_get_every_revoke() {
    let conn = connect().await;
    let mut a = start_worker(unique_queue("dup-a"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut cfg = consumer_config(&unique_queue("dup-b"));
    cfg.node_name = a.node.clone();
    let mut b = start_with(cfg);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut jobs = Vec::new();
    for w in [&mut a, &mut b] {
        publish_task(&conn, &w.queue, "celery5-prediction").await;
        let job = tokio::time::timeout(Duration::from_secs(20), w.jobs.recv())
            .await
            .expect("the job did not start")
            .unwrap();
        jobs.push(job);
    }
    // One revoke message for both: a shared mailbox would give it to one.
    let ids: Vec<String> = jobs.iter().map(|j| j.message.task_id.clone()).collect();
    tokio::task::spawn_blocking(move || celery_tool(&["revoke", &ids[0], &ids[1]]))
        .await
        .unwrap();
    for j in &jobs {
        tokio::time::timeout(Duration::from_secs(10), j.cancel.cancelled())
            .await
            .unwrap_or_else(|_| panic!("the revoke of {} was lost", j.message.task_id));
    }
    for w in [a, b] {
        w.shutdown.cancel();
        w.handle.await.unwrap();
        delete_queue(&conn, &w.queue).await;
    }
}
