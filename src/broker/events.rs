//! Celery worker events (`worker-online`, `worker-heartbeat` every 2 s,
//! `worker-offline`) on the `celeryev` topic exchange, as Celery's
//! `EventDispatcher` and `Heart` send them, so `celery events` and Flower
//! see this worker.
//!
//! An event is a JSON object with `hostname`, `utcoffset`, `pid`, `clock`,
//! `freq`, `sw_ident`, `sw_ver`, `sw_sys`, `active`, `processed`,
//! `loadavg`, `timestamp` and `type`; its routing key is the type with
//! `-` replaced by `.` (`worker.heartbeat`); the message is transient,
//! with the header `hostname`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Value};

use super::pidbox::json_properties;

/// Celery's event exchange.
pub const EVENT_EXCHANGE: &str = "celeryev";
/// Seconds between heartbeats (Celery's `Heart` default).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// What the worker events carry besides the type.
#[derive(Debug, Clone)]
pub struct WorkerEvent<'a> {
    pub kind: &'a str,
    pub node: &'a str,
    pub clock: u64,
    pub active: usize,
    pub processed: u64,
}

/// The event body, as Celery builds it.
pub fn body(e: &WorkerEvent) -> Value {
    json!({
        "hostname": e.node,
        "utcoffset": utcoffset(),
        "pid": std::process::id(),
        "clock": e.clock,
        "freq": HEARTBEAT.as_secs_f64(),
        "sw_ident": "compute-worker",
        "sw_ver": env!("CARGO_PKG_VERSION"),
        "sw_sys": "Linux",
        "active": e.active,
        "processed": e.processed,
        "loadavg": loadavg(),
        "timestamp": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "type": e.kind,
    })
}

/// Declare `celeryev` as Celery does (topic, durable).
pub async fn declare(ch: &Channel) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        EVENT_EXCHANGE,
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Publish one worker event on `ch` (where [`declare`] ran).
pub async fn send(ch: &Channel, e: &WorkerEvent<'_>) -> Result<(), lapin::Error> {
    let mut headers = FieldTable::default();
    headers.insert(
        "hostname".into(),
        AMQPValue::LongString(e.node.to_string().into()),
    );
    let payload = serde_json::to_vec(&body(e)).unwrap_or_default();
    ch.basic_publish(
        EVENT_EXCHANGE,
        &e.kind.replace('-', "."),
        BasicPublishOptions::default(),
        &payload,
        json_properties(headers),
    )
    .await?
    .await?;
    Ok(())
}

/// Celery's `utcoffset()`: hours west of UTC, floored.
fn utcoffset() -> i64 {
    let now: libc::time_t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers
    // are valid for the call.
    let gmtoff = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    };
    (-gmtoff).div_euclid(3600)
}

/// The 1, 5 and 15 minute load averages, rounded to 2 places as Celery's
/// `load_average()`.
fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        for (o, f) in out.iter_mut().zip(s.split_whitespace()) {
            *o = (f.parse::<f64>().unwrap_or(0.0) * 100.0).round() / 100.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_body_has_celerys_fields() {
        let b = body(&WorkerEvent {
            kind: "worker-heartbeat",
            node: "compute-worker@h",
            clock: 7,
            active: 1,
            processed: 2,
        });
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
            "type",
        ] {
            assert!(b.get(k).is_some(), "missing {k} in {b}");
        }
        assert_eq!(b["freq"], json!(2.0));
        assert_eq!(b["loadavg"].as_array().unwrap().len(), 3);
    }
}
