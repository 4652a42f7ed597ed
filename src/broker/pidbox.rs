//! Celery remote control ("pidbox", kombu's `Mailbox`), as a Celery worker
//! answers it, so that `celery inspect`, Flower and Codabench's worker
//! panel see a compute-worker like any Celery worker.
//!
//! * The mailbox queue is `<node>.celery.pidbox` (Codabench's panel lists
//!   a worker by this name: `compute-worker@<host>.celery.pidbox`), with
//!   kombu's attributes: not durable, auto-delete, `x-message-ttl` 300 s,
//!   `x-expires` 10 s, bound to the fanout exchange `celery.pidbox`.
//! * A request is `{"method", "arguments", "destination", "pattern",
//!   "matcher", "reply_to": {"exchange", "routing_key"}, "ticket"}`. It is
//!   for this node when `destination` names it, or `pattern` matches it,
//!   or neither is given (a broadcast).
//! * The reply is `{<node>: <answer>}` in JSON, published to the requested
//!   exchange (declared as kombu does: direct, not durable, normally
//!   `reply.celery.pidbox`) and routing key, with the headers `ticket`
//!   and `clock`, transient.
//! * Answered: `ping`, `active`, `stats`, `registered`, `reserved`,
//!   `scheduled`, `revoked`, `active_queues`, `clock`, `heartbeat` (sends
//!   a `worker-heartbeat` event) and `revoke`. Any
//!   other command (`shutdown`, `pool_grow`, ...) changes nothing and
//!   answers an error that names it.

use std::sync::atomic::{AtomicU64, Ordering};

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{json, Value};

/// Name of Celery's remote-control fanout exchange.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// The one task this worker runs, as `inspect registered` lists it.
pub const TASK_NAME: &str = "compute_worker_run";

/// `<node>.celery.pidbox`, as kombu's `Mailbox.get_queue` names it.
pub fn queue_name(node: &str) -> String {
    format!("{node}.celery.pidbox")
}

/// kombu's mailbox queue arguments (`x-message-ttl` 300 s, `x-expires`
/// 10 s), encoded as py-amqp encodes Python ints (signed 32-bit).
pub fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
    args.insert("x-expires".into(), AMQPValue::LongInt(10_000));
    args
}

/// Declare the fanout exchange and the mailbox queue `name` on `ch`, bound
/// to it. Returns how many consumers the queue already has.
pub async fn declare(ch: &Channel, name: &str, exclusive: bool) -> Result<u32, lapin::Error> {
    ch.exchange_declare(
        PIDBOX_EXCHANGE,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: false,
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let q = ch
        .queue_declare(
            name,
            QueueDeclareOptions {
                exclusive,
                auto_delete: true,
                ..Default::default()
            },
            queue_arguments(),
        )
        .await?;
    ch.queue_bind(
        name,
        PIDBOX_EXCHANGE,
        "",
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(q.consumer_count())
}

/// A remote-control message addressed to this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub arguments: Value,
    /// `(exchange, routing_key)` to answer to; `None` for a cast.
    pub reply_to: Option<(String, String)>,
    pub ticket: Option<String>,
}

/// Parse a pidbox body. `Ok(None)` when it is addressed to other nodes.
pub fn parse(body: &[u8], node: &str) -> Result<Option<Request>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .ok_or("no \"method\"")?
        .to_string();
    let dest = v.get("destination").and_then(Value::as_array);
    let pattern = v.get("pattern").and_then(Value::as_str);
    let for_us = match (dest, pattern) {
        (Some(d), _) if !d.is_empty() => d.iter().any(|d| d.as_str() == Some(node)),
        (_, Some(p)) => match v.get("matcher").and_then(Value::as_str) {
            // kombu's default matcher is glob; pcre is not supported here.
            None | Some("glob") => glob(p.as_bytes(), node.as_bytes()),
            Some(_) => p == node,
        },
        _ => true,
    };
    if !for_us {
        return Ok(None);
    }
    let reply_to = match v.get("reply_to") {
        None | Some(Value::Null) => None,
        Some(r) => match (
            r.get("exchange").and_then(Value::as_str),
            r.get("routing_key").and_then(Value::as_str),
        ) {
            (Some(e), Some(k)) => Some((e.to_string(), k.to_string())),
            _ => return Err("\"reply_to\" without exchange and routing_key strings".into()),
        },
    };
    Ok(Some(Request {
        method,
        arguments: v.get("arguments").cloned().unwrap_or(Value::Null),
        reply_to,
        ticket: v.get("ticket").and_then(Value::as_str).map(str::to_string),
    }))
}

/// fnmatch-style `*` and `?` (kombu's glob matcher).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// The task ids of a `revoke` request and its `terminate` flag.
pub fn revoke_arguments(args: &Value) -> Result<(Vec<String>, bool), String> {
    let ids = match args.get("task_id") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => return Err("revoke without task_id".into()),
    };
    let terminate = args
        .get("terminate")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((ids, terminate))
}

/// A job running here, as `inspect active` shows it.
#[derive(Debug, Clone)]
pub struct ActiveTask {
    pub id: String,
    /// The task's positional arguments (`[run_args]`), secret redacted.
    pub args: Value,
    /// Unix time the job started.
    pub time_start: f64,
    pub routing_key: String,
    pub priority: u8,
    pub redelivered: bool,
}

/// What the answers are made of, taken at the time of the request.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub node: String,
    pub pid: u32,
    pub clock: u64,
    pub uptime_secs: u64,
    pub slots: usize,
    pub queue: String,
    pub active: Vec<ActiveTask>,
    pub processed: u64,
    pub revoked: Vec<String>,
    /// `stats`' `broker` entry (host, user, vhost, port, ssl, heartbeat).
    pub broker: Value,
}

/// Celery's answer to `method`, or an error naming a command this worker
/// does not implement. `revoke` is acted on by the caller; only its reply
/// is made here.
pub fn answer(req: &Request, w: &WorkerView) -> Value {
    match req.method.as_str() {
        "ping" => json!({"ok": "pong"}),
        "heartbeat" => json!({"ok": "heartbeat sent"}),
        "active" => Value::Array(w.active.iter().map(|t| active_info(t, w)).collect()),
        "stats" => stats(w),
        "registered" => json!([TASK_NAME]),
        "reserved" | "scheduled" => json!([]),
        "revoked" => json!(w.revoked),
        "clock" => json!({"clock": w.clock}),
        "active_queues" => json!([{
            "name": w.queue, "exchange": {"name": w.queue, "type": "direct",
            "arguments": null, "durable": true, "passive": false, "auto_delete": false,
            "delivery_mode": null, "no_declare": false},
            "routing_key": w.queue, "queue_arguments": {"x-max-priority": 10},
            "binding_arguments": null, "consumer_arguments": null, "durable": true,
            "exclusive": false, "auto_delete": false, "no_ack": false, "alias": null,
            "bindings": [], "no_declare": null, "expires": null, "message_ttl": null,
            "max_length": null, "max_length_bytes": null, "max_priority": null
        }]),
        "revoke" => match revoke_arguments(&req.arguments) {
            Ok((ids, _)) => json!({"ok": format!("tasks {} flagged as revoked", ids.join(", "))}),
            Err(e) => json!({"error": e}),
        },
        other => json!({"error": format!(
            "compute-worker does not implement the remote-control command {other:?}; \
             it answers ping, active, stats, registered, reserved, scheduled, revoked, \
             active_queues, clock, heartbeat and revoke"
        )}),
    }
}

fn active_info(t: &ActiveTask, w: &WorkerView) -> Value {
    json!({
        "id": t.id,
        "name": TASK_NAME,
        "args": t.args,
        "kwargs": {},
        "type": TASK_NAME,
        "hostname": w.node,
        "time_start": t.time_start,
        "acknowledged": false,
        "delivery_info": {"exchange": "", "routing_key": t.routing_key,
                          "priority": t.priority, "redelivered": t.redelivered},
        "worker_pid": w.pid,
    })
}

fn stats(w: &WorkerView) -> Value {
    let total = if w.processed > 0 {
        json!({TASK_NAME: w.processed})
    } else {
        json!({})
    };
    json!({
        "total": total,
        "pid": w.pid,
        "clock": w.clock.to_string(),
        "uptime": w.uptime_secs,
        "pool": {
            "implementation": "compute-worker:sandbox",
            "max-concurrency": w.slots,
            "processes": [w.pid],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [0, 0],
        },
        "broker": w.broker,
        "prefetch_count": w.slots,
        "rusage": rusage(),
    })
}

fn rusage() -> Value {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(r) = getrusage(UsageWho::RUSAGE_SELF) else {
        return json!("N/A");
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    json!({
        "utime": secs(r.user_time()), "stime": secs(r.system_time()),
        "maxrss": r.max_rss(), "ixrss": r.shared_integral(), "idrss": r.unshared_data_integral(),
        "isrss": r.unshared_stack_integral(), "minflt": r.minor_page_faults(),
        "majflt": r.major_page_faults(), "nswap": r.full_swaps(), "inblock": r.block_reads(),
        "oublock": r.block_writes(), "msgsnd": r.ipc_sends(), "msgrcv": r.ipc_receives(),
        "nsignals": r.signals(), "nvcsw": r.voluntary_context_switches(),
        "nivcsw": r.involuntary_context_switches(),
    })
}

/// Publish `{node: answer}` to the requester, as kombu's
/// `Mailbox._publish_reply` does. Declaring the requested exchange can
/// fail (another type, a reserved name) and close `ch`: use a channel of
/// its own for each reply.
pub async fn reply(
    ch: &Channel,
    (exchange, routing_key): (&str, &str),
    ticket: Option<&str>,
    clock: u64,
    node: &str,
    answer: Value,
) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        exchange,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let mut headers = FieldTable::default();
    headers.insert(
        "ticket".into(),
        match ticket {
            Some(t) => AMQPValue::LongString(t.into()),
            None => AMQPValue::Void,
        },
    );
    headers.insert("clock".into(), AMQPValue::LongLongInt(clock as i64));
    let body = serde_json::to_vec(&json!({ node: answer })).unwrap_or_default();
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        &body,
        json_properties(headers),
    )
    .await?
    .await?;
    Ok(())
}

/// Transient JSON message properties, as kombu sets them.
pub fn json_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
        .with_headers(headers)
}

/// Celery's Lamport clock (`app.clock`): forwarded on every message sent,
/// moved past every `clock` header received.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn adjust(&self, other: u64) -> u64 {
        self.0.fetch_max(other, Ordering::SeqCst);
        self.forward()
    }
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing() {
        let b = br#"{"method": "ping", "arguments": {}, "destination": null, "pattern": null, "matcher": null, "ticket": "t1", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}}"#;
        let r = parse(b, "n@h").unwrap().unwrap();
        assert_eq!(r.method, "ping");
        assert_eq!(r.ticket.as_deref(), Some("t1"));
        assert_eq!(
            r.reply_to,
            Some(("reply.celery.pidbox".into(), "oid".into()))
        );
        let other = br#"{"method": "ping", "destination": ["x@y"]}"#;
        assert_eq!(parse(other, "n@h").unwrap(), None);
        let pat = br#"{"method": "ping", "pattern": "compute-worker@*", "matcher": "glob"}"#;
        assert!(parse(pat, "compute-worker@h1").unwrap().is_some());
        assert!(parse(pat, "celery@h1").unwrap().is_none());
        assert!(parse(b"[1]", "n@h").is_err());
        let bad_reply = br#"{"method": "ping", "reply_to": {"exchange": 1}}"#;
        assert!(parse(bad_reply, "n@h").is_err());
    }

    #[test]
    fn unknown_commands_are_refused_by_name() {
        let req = Request {
            method: "shutdown".into(),
            arguments: Value::Null,
            reply_to: None,
            ticket: None,
        };
        let w = WorkerView {
            node: "n@h".into(),
            pid: 1,
            clock: 3,
            uptime_secs: 0,
            slots: 1,
            queue: "q".into(),
            active: vec![],
            processed: 0,
            revoked: vec![],
            broker: Value::Null,
        };
        let a = answer(&req, &w);
        assert!(a["error"].as_str().unwrap().contains("\"shutdown\""), "{a}");
        assert_eq!(
            answer(
                &Request {
                    method: "ping".into(),
                    ..req
                },
                &w
            ),
            json!({"ok": "pong"})
        );
    }
}
