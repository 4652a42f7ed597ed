//! Celery task message protocol v2 (JSON serializer), as published by a
//! Codabench site for the `compute_worker_run` task.
//!
//! A message is an AMQP header table (Celery's `task`, `id`, `timelimit`,
//! ...) plus a JSON body `[args, kwargs, embed]` whose single positional
//! argument is the `run_args` dict. [`decode`] turns one into a
//! [`TaskMessage`] with a typed [`RunArgs`], or a [`DecodeError`] that the
//! consumer logs and drops.
//!
//! The submission `secret` arrives as a plain string from sites on kombu 4
//! (Celery 4.x) and as `{"__type__": "uuid", "__value__": {"hex": ...}}`
//! from sites on kombu ≥ 5.3 (Celery 5.6); both become the hyphenated
//! lower-case UUID string the site's API expects back.
//!
//! [`table_to_json`] / [`json_to_table`] convert between lapin's AMQP
//! tables and JSON, so the decoder can be fed straight from a delivery and
//! tests can publish captured header tables again.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The only task name this worker runs.
pub const TASK_NAME: &str = "compute_worker_run";

/// Why a broker message cannot be run. The consumer logs it with the task
/// id (see [`peek_task_id`]) and acknowledges the message so that it does
/// not come back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Celery protocol v2 task message: no `task` header (Celery protocol v1 and non-Celery messages are not supported)")]
    NotCeleryV2,
    #[error("unknown task `{0}`: this worker only runs `{TASK_NAME}`; check that the queue is a Codabench compute-worker queue")]
    UnknownTask(String),
    #[error("task message has no `id` header")]
    MissingId,
    #[error("unsupported content type `{0}`: Codabench sends `application/json`")]
    ContentType(String),
    #[error("bad `{name}` header: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error("message body is not JSON: {0}")]
    BodyJson(#[source] serde_json::Error),
    #[error("message body is not a Celery v2 `[args, kwargs, embed]` array: {0}")]
    BodyShape(String),
    #[error("invalid run_args: {0}")]
    RunArgs(#[source] serde_json::Error),
}

/// One decoded `compute_worker_run` task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Celery task id (`id` header); used for revoke and de-duplication.
    pub task_id: String,
    /// `timelimit[0]`: hard limit (the site never sets it).
    pub hard_time_limit: Option<Duration>,
    /// `timelimit[1]`: soft limit, the site's `execution_time_limit + 1200`
    /// seconds. The worker treats it as an outer deadline for the whole job.
    pub soft_time_limit: Option<Duration>,
    /// `retries` header (0 for a first delivery from the site).
    pub retries: u64,
    /// The job description.
    pub run_args: RunArgs,
}

/// The `run_args` dict built by the site's `_send_to_compute_worker`.
///
/// Keys the worker does not know are kept in [`RunArgs::extra`], never an
/// error, so newer sites keep working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunArgs {
    /// Submission owner's pk (WebSocket path, work dir names).
    pub user_pk: u64,
    /// Base of the site's REST API, e.g. `https://www.codabench.org/api`.
    pub submissions_api_url: String,
    /// Per-submission credential, always the hyphenated UUID string.
    #[serde(deserialize_with = "de_secret")]
    pub secret: String,
    /// Competition image (`codalab/codalab-legacy:py37` by default).
    pub docker_image: String,
    /// Seconds the programs may run (wall clock, both together); 0 = none.
    #[serde(deserialize_with = "de_seconds")]
    pub execution_time_limit: u64,
    /// Submission pk (a child submission for multi-task phases).
    pub id: u64,
    /// `false`: prediction (ingestion) step, `true`: scoring step.
    pub is_scoring: bool,
    /// Prediction step: presigned PUT; scoring step: presigned GET of the
    /// same object.
    pub prediction_result: String,
    /// Scoring step with detailed results enabled: presigned PUT (text/html).
    #[serde(default)]
    pub detailed_results_url: Option<String>,
    /// Scoring step: presigned PUT for the scoring output zip.
    #[serde(default)]
    pub scoring_result: Option<String>,
    /// Legacy sites: the ingestion program zip.
    #[serde(default)]
    pub ingestion_program: Option<String>,
    #[serde(default)]
    pub input_data: Option<String>,
    #[serde(default)]
    pub reference_data: Option<String>,
    #[serde(default, deserialize_with = "de_bool_or_null")]
    pub ingestion_only_during_scoring: bool,
    /// Legacy sites (≤ v1.26). Prediction: the submission zip; scoring:
    /// the scoring program zip.
    #[serde(default)]
    pub program_data: Option<String>,
    /// Sites from v1.27 on: the submission zip, in both steps.
    #[serde(default)]
    pub submission_data: Option<String>,
    /// Sites from v1.27 on: the ingestion program (legacy: `ingestion_program`).
    #[serde(default)]
    pub ingestion_program_data: Option<String>,
    /// Sites from v1.27 on, scoring step: the scoring program zip.
    #[serde(default)]
    pub scoring_program_data: Option<String>,
    #[serde(default)]
    pub prediction_stdout: Option<String>,
    #[serde(default)]
    pub prediction_stderr: Option<String>,
    #[serde(default)]
    pub prediction_ingestion_stdout: Option<String>,
    #[serde(default)]
    pub prediction_ingestion_stderr: Option<String>,
    #[serde(default)]
    pub scoring_stdout: Option<String>,
    #[serde(default)]
    pub scoring_stderr: Option<String>,
    #[serde(default)]
    pub scoring_ingestion_stdout: Option<String>,
    #[serde(default)]
    pub scoring_ingestion_stderr: Option<String>,
    /// Human in the loop (Codabench #2443); absent or null: false.
    #[serde(default, deserialize_with = "de_bool_or_null")]
    pub human_in_the_loop: bool,
    /// Keys this worker does not know about.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Presigned PUT URLs for the four log files of one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogUrls {
    pub program_stdout: Option<String>,
    pub program_stderr: Option<String>,
    pub ingestion_stdout: Option<String>,
    pub ingestion_stderr: Option<String>,
}

impl RunArgs {
    /// The keys the task carries with a value, sorted (for messages about
    /// what a task lacks).
    pub fn keys(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The log upload URLs of this step (`prediction_*` or `scoring_*`).
    pub fn log_urls(&self) -> LogUrls {
        if self.is_scoring {
            LogUrls {
                program_stdout: self.scoring_stdout.clone(),
                program_stderr: self.scoring_stderr.clone(),
                ingestion_stdout: self.scoring_ingestion_stdout.clone(),
                ingestion_stderr: self.scoring_ingestion_stderr.clone(),
            }
        } else {
            LogUrls {
                program_stdout: self.prediction_stdout.clone(),
                program_stderr: self.prediction_stderr.clone(),
                ingestion_stdout: self.prediction_ingestion_stdout.clone(),
                ingestion_stderr: self.prediction_ingestion_stderr.clone(),
            }
        }
    }

    /// Where this step's output zip goes: `prediction_result` in the
    /// prediction step, `scoring_result` in the scoring step.
    pub fn result_put_url(&self) -> Option<&str> {
        if self.is_scoring {
            self.scoring_result.as_deref()
        } else {
            Some(&self.prediction_result)
        }
    }
}

/// Normalize a `secret` value: a string is kept as is; kombu's typed UUID
/// (`{"__type__":"uuid","__value__":{"hex":..., "version":...}}`) becomes
/// the hyphenated form.
pub fn normalize_secret(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Object(map) => {
            let ty = map.get("__type__").and_then(Value::as_str);
            if ty != Some("uuid") {
                return Err(format!("secret is an object of unsupported type {ty:?}"));
            }
            let hex = match map.get("__value__") {
                Some(Value::Object(v)) => v.get("hex").and_then(Value::as_str),
                // Tolerate a bare string value as well.
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            }
            .ok_or_else(|| "typed uuid secret has no `__value__.hex`".to_string())?;
            let id = uuid::Uuid::try_parse(hex)
                .map_err(|e| format!("typed uuid secret `{hex}` is not a UUID: {e}"))?;
            Ok(id.hyphenated().to_string())
        }
        other => Err(format!(
            "secret must be a string or a typed uuid, got {other}"
        )),
    }
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    normalize_secret(&v).map_err(serde::de::Error::custom)
}

fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(0),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(u),
            (None, Some(f)) if f >= 0.0 && f.is_finite() => Ok(f.ceil() as u64),
            _ => Err(serde::de::Error::custom(format!(
                "execution_time_limit must be a non-negative number of seconds, got {v}"
            ))),
        },
        _ => Err(serde::de::Error::custom(format!(
            "execution_time_limit must be a number of seconds, got {v}"
        ))),
    }
}

fn de_bool_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// The task id of a message, if it carries one, for logging a message that
/// fails to decode: the `id` header, else the AMQP `correlation_id`.
pub fn peek_task_id(headers: &Map<String, Value>, correlation_id: Option<&str>) -> Option<String> {
    headers
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| correlation_id.map(str::to_string))
}

fn duration_of(v: &Value, name: &'static str) -> Result<Option<Duration>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(-1.0);
            if secs.is_finite() && secs >= 0.0 {
                Ok(Some(Duration::from_secs_f64(secs)))
            } else {
                Err(DecodeError::BadHeader {
                    name,
                    reason: format!("negative or invalid time limit {n}"),
                })
            }
        }
        other => Err(DecodeError::BadHeader {
            name,
            reason: format!("time limit must be a number or null, got {other}"),
        }),
    }
}

/// Decode one Celery v2 message.
///
/// `headers` is the AMQP header table as JSON (see [`table_to_json`]);
/// `content_type` is the AMQP property (absent is accepted as JSON).
pub fn decode(
    headers: &Map<String, Value>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<TaskMessage, DecodeError> {
    let task = match headers.get("task") {
        Some(Value::String(t)) => t,
        _ => return Err(DecodeError::NotCeleryV2),
    };
    if task != TASK_NAME {
        return Err(DecodeError::UnknownTask(task.clone()));
    }
    let task_id = match headers.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(DecodeError::MissingId),
    };
    if let Some(ct) = content_type {
        if !ct.is_empty() && ct != "application/json" {
            return Err(DecodeError::ContentType(ct.to_string()));
        }
    }
    let (hard_time_limit, soft_time_limit) = match headers.get("timelimit") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Array(a)) if a.len() == 2 => (
            duration_of(&a[0], "timelimit")?,
            duration_of(&a[1], "timelimit")?,
        ),
        Some(other) => {
            return Err(DecodeError::BadHeader {
                name: "timelimit",
                reason: format!("expected [hard, soft], got {other}"),
            })
        }
    };
    let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);

    let body: Value = serde_json::from_slice(body).map_err(DecodeError::BodyJson)?;
    let parts = body
        .as_array()
        .ok_or_else(|| DecodeError::BodyShape("body is not a JSON array".into()))?;
    if parts.len() != 3 {
        return Err(DecodeError::BodyShape(format!(
            "expected 3 elements, got {}",
            parts.len()
        )));
    }
    let args = parts[0]
        .as_array()
        .ok_or_else(|| DecodeError::BodyShape("args is not a list".into()))?;
    let run_args = match (args.as_slice(), parts[1].get("run_args")) {
        ([one], _) => one,
        ([], Some(kw)) => kw,
        _ => {
            return Err(DecodeError::BodyShape(format!(
                "expected exactly one positional argument (run_args), got {}",
                args.len()
            )))
        }
    };
    if !run_args.is_object() {
        return Err(DecodeError::BodyShape("run_args is not a dict".into()));
    }
    let run_args = RunArgs::deserialize(run_args).map_err(DecodeError::RunArgs)?;
    Ok(TaskMessage {
        task_id,
        hard_time_limit,
        soft_time_limit,
        retries,
        run_args,
    })
}

/// Convert an AMQP header table to JSON (the form Celery's headers have in
/// Python). Byte arrays and non-UTF-8 strings become lossy strings.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(i) => (*i).into(),
        AMQPValue::Float(f) => serde_json::Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::DecimalValue(d) => {
            let f = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

/// Convert JSON to an AMQP table the way py-amqp encodes Python values:
/// ints that fit in 32 bits as signed 32-bit (`I`), others as signed
/// 64-bit, floats as doubles, strings as long strings, `None` as void.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in map {
        t.insert(ShortString::from(k.as_str()), json_to_value(v));
    }
    t
}

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(task: &str) -> Map<String, Value> {
        json!({"task": task, "id": "t-1", "timelimit": [null, 1800], "retries": 0})
            .as_object()
            .unwrap()
            .clone()
    }

    fn body(run_args: Value) -> Vec<u8> {
        serde_json::to_vec(&json!([[run_args], {}, {"callbacks": null}])).unwrap()
    }

    fn minimal() -> Value {
        json!({"user_pk": 7, "submissions_api_url": "http://s/api",
               "secret": "0f8fad5b-d9cb-469f-a165-70867728950e",
               "docker_image": "img", "execution_time_limit": 600, "id": 3,
               "is_scoring": false, "prediction_result": "http://p"})
    }

    #[test]
    fn typed_secret_with_and_without_version_is_hyphenated() {
        for v in [
            json!({"__type__": "uuid", "__value__": {"hex": "0f8fad5bd9cb469fa16570867728950e"}}),
            json!({"__type__": "uuid", "__value__": {"hex": "0F8FAD5BD9CB469FA16570867728950E", "version": 4}}),
        ] {
            assert_eq!(
                normalize_secret(&v).unwrap(),
                "0f8fad5b-d9cb-469f-a165-70867728950e"
            );
        }
        assert!(normalize_secret(&json!({"__type__": "datetime", "__value__": "x"})).is_err());
        assert!(
            normalize_secret(&json!({"__type__": "uuid", "__value__": {"hex": "zz"}})).is_err()
        );
        assert!(normalize_secret(&json!(12)).is_err());
    }

    #[test]
    fn unknown_keys_are_kept_and_nulls_are_absent() {
        let mut ra = minimal();
        ra["new_site_key"] = json!({"x": 1});
        ra["scoring_result"] = Value::Null;
        ra["ingestion_only_during_scoring"] = Value::Null;
        let m = decode(&headers(TASK_NAME), Some("application/json"), &body(ra)).unwrap();
        assert_eq!(m.run_args.extra["new_site_key"], json!({"x": 1}));
        assert_eq!(m.run_args.scoring_result, None);
        assert!(!m.run_args.ingestion_only_during_scoring);
        assert_eq!(m.soft_time_limit, Some(Duration::from_secs(1800)));
        assert_eq!(m.hard_time_limit, None);
        assert_eq!(m.run_args.result_put_url(), Some("http://p"));
    }

    #[test]
    fn wrong_task_and_garbage_are_typed_errors() {
        let b = body(minimal());
        assert!(matches!(
            decode(&headers("celery.ping"), None, &b),
            Err(DecodeError::UnknownTask(t)) if t == "celery.ping"
        ));
        assert!(matches!(
            decode(&Map::new(), None, &b),
            Err(DecodeError::NotCeleryV2)
        ));
        assert!(matches!(
            decode(&headers(TASK_NAME), None, b"not json"),
            Err(DecodeError::BodyJson(_))
        ));
        assert!(matches!(
            decode(&headers(TASK_NAME), None, b"{\"a\":1}"),
            Err(DecodeError::BodyShape(_))
        ));
        assert!(matches!(
            decode(
                &headers(TASK_NAME),
                Some("application/x-python-serialize"),
                &b
            ),
            Err(DecodeError::ContentType(_))
        ));
        let mut no_id = minimal();
        no_id.as_object_mut().unwrap().remove("id");
        assert!(matches!(
            decode(&headers(TASK_NAME), None, &body(no_id)),
            Err(DecodeError::RunArgs(_))
        ));
        let mut h = headers(TASK_NAME);
        h.insert("timelimit".into(), json!("soon"));
        assert!(matches!(
            decode(&h, None, &b),
            Err(DecodeError::BadHeader { .. })
        ));
    }

    #[test]
    fn run_args_given_as_keyword_is_accepted() {
        let b = serde_json::to_vec(&json!([[], {"run_args": minimal()}, {}])).unwrap();
        let m = decode(&headers(TASK_NAME), None, &b).unwrap();
        assert_eq!(m.run_args.id, 3);
    }

    #[test]
    fn tables_round_trip_with_py_amqp_int_widths() {
        let h = json!({"a": 5, "b": 5_000_000_000i64, "c": null, "d": [null, 1.5], "e": {}, "f": true, "g": "s"});
        let t = json_to_table(h.as_object().unwrap());
        assert!(matches!(t.inner().get("a"), Some(AMQPValue::LongInt(5))));
        assert!(matches!(
            t.inner().get("b"),
            Some(AMQPValue::LongLongInt(_))
        ));
        assert_eq!(Value::Object(table_to_json(&t)), h);
    }
}
