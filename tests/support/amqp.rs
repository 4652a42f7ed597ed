//! Real-RabbitMQ helpers: unique queue names, publishing captured Celery
//! messages byte for byte, inspecting queues, dropping one connection.
//!
//! RabbitMQ must run on 127.0.0.1:5672 with guest/guest (`BROKER_URL`
//! overrides it).

use std::process::Command;
use std::time::Duration;

use compute_worker::broker::celery::json_to_table;
use compute_worker::broker::{BrokerUrl, ConsumerConfig};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Map, Value};

pub fn broker_url() -> String {
    std::env::var("BROKER_URL").unwrap_or_else(|_| "pyamqp://guest:guest@127.0.0.1:5672//".into())
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    format!(
        "cw-test-{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Consumer settings for a test queue, with a unique connection name (so
/// [`drop_connection`] can find it) and fast reconnects.
pub fn consumer_config(queue: &str) -> ConsumerConfig {
    let mut cfg = ConsumerConfig::new(BrokerUrl::parse(&broker_url(), false, false).unwrap());
    cfg.queue = queue.to_string();
    cfg.node_name = format!("compute-worker@{queue}");
    cfg.connection_name = format!("conn-{queue}");
    cfg.reconnect_min = Duration::from_millis(200);
    cfg.reconnect_max = Duration::from_secs(2);
    cfg
}

pub async fn connect() -> Connection {
    let url = BrokerUrl::parse(&broker_url(), false, false).unwrap();
    let uri = format!(
        "amqp://{}:{}@{}:{}/{}",
        url.username,
        url.password,
        url.host,
        url.port,
        percent_encoding::utf8_percent_encode(&url.vhost, percent_encoding::NON_ALPHANUMERIC)
    );
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    Connection::connect(&uri, props)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)")
}

/// A captured Celery message (see tests/fixtures/celery/celery_tool.py).
pub struct Captured {
    pub headers: Map<String, Value>,
    pub properties: Value,
    pub body: String,
}

pub fn fixture(name: &str) -> Captured {
    let path = format!(
        "{}/tests/fixtures/celery/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    Captured {
        headers: v["headers"].as_object().unwrap().clone(),
        properties: v["properties"].clone(),
        body: v["body"].as_str().unwrap().to_string(),
    }
}

/// Publish `body` with Celery's AMQP properties and `headers`, the way the
/// site does: default exchange, routing key = queue.
pub async fn publish_raw(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    headers: &Map<String, Value>,
    props: &Value,
    body: &[u8],
) {
    let ch = conn.create_channel().await.unwrap();
    let mut p = BasicProperties::default()
        .with_headers(json_to_table(headers))
        .with_delivery_mode(props["delivery_mode"].as_u64().unwrap_or(2) as u8)
        .with_priority(props["priority"].as_u64().unwrap_or(0) as u8);
    if let Some(ct) = props["content_type"].as_str() {
        p = p.with_content_type(ct.into());
    }
    if let Some(ce) = props["content_encoding"].as_str() {
        p = p.with_content_encoding(ce.into());
    }
    if let Some(c) = props["correlation_id"].as_str() {
        p = p.with_correlation_id(c.into());
    }
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        body,
        p,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = ch.close(200, "ok").await;
}

/// Publish a captured task message with a fresh task id; returns the id.
pub async fn publish_task(conn: &Connection, queue: &str, name: &str) -> String {
    let mut c = fixture(name);
    let id = uuid::Uuid::new_v4().to_string();
    c.headers.insert("id".into(), Value::String(id.clone()));
    c.headers
        .insert("root_id".into(), Value::String(id.clone()));
    c.properties["correlation_id"] = Value::String(id.clone());
    publish_raw(
        conn,
        "",
        queue,
        &c.headers,
        &c.properties,
        c.body.as_bytes(),
    )
    .await;
    id
}

/// Publish the captured revoke for `task_id` to `celery.pidbox`, with a
/// fresh expiry, as `Submission.cancel()` does.
pub async fn publish_revoke(conn: &Connection, task_id: &str) {
    let mut c = fixture("celery5-revoke");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    c.headers
        .insert("expires".into(), serde_json::json!(now + 60.0));
    let body = c
        .body
        .replace("b6e2e841-3ace-4031-9295-59cb3031e969", task_id);
    publish_raw(
        conn,
        "celery.pidbox",
        "",
        &c.headers,
        &c.properties,
        body.as_bytes(),
    )
    .await;
}

/// (ready, unacked-or-not) message count of a queue, passively.
pub async fn message_count(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = ch.close(200, "ok").await;
    q.message_count()
}

pub async fn delete_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch.queue_delete(queue, QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(queue, Default::default()).await;
    let _ = ch.close(200, "ok").await;
}

/// Force-close the broker connection(s) whose client-provided name is
/// `name`, as a broker restart or network cut would (`rabbitmqctl`).
pub fn drop_connection(name: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let mut n = 0;
    for line in text.lines().filter(|l| l.contains(&needle)) {
        let pid = line.split('\t').next().unwrap();
        let st = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: simulated broker loss"])
            .status()
            .unwrap();
        assert!(st.success());
        n += 1;
    }
    n
}

/// Poll `f` until it is true or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Whether RabbitMQ sees the connection(s) named `name` over TLS: one
/// entry per connection (`rabbitmqctl list_connections ssl`).
pub fn connections_over_tls(name: &str) -> Vec<bool> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "ssl",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| l.split('\t').next() == Some("true"))
        .collect()
}

/// The Python Celery path to `tests/fixtures/celery/celery_tool.py`
/// (`CELERY_PYTHON`, default `python3`), with `BROKER_URL` set.
pub fn celery_tool_command() -> Command {
    let script = format!(
        "{}/tests/fixtures/celery/celery_tool.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let python = std::env::var("CELERY_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(python);
    cmd.arg(script).env("BROKER_URL", broker_url());
    cmd
}

/// Run `celery_tool.py ARGS` (real Celery 5.6.2); its trimmed stdout.
pub fn celery_tool(args: &[&str]) -> String {
    let out = celery_tool_command().args(args).output().expect("python3");
    assert!(
        out.status.success(),
        "celery_tool.py failed (needs `pip install celery==5.6.2 kombu==5.6.2`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
