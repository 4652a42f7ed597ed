//! A fake Codabench site on 127.0.0.1 that behaves like the real one at
//! the boundary the worker talks to (see codabench-protocol.md §3.3, §3.9):
//!
//! * `PATCH /api/submissions/<id>/`: form-encoded only; `secret` must match
//!   (403 "Submission secrets do not match"; a non-UUID secret is a 500 as
//!   on the real site); recorded in order; failures injectable per status.
//! * `POST /api/upload_submission_scores/<id>/`: JSON `{"secret","scores"}`.
//! * `PUT /storage/<key>?content-type=<signed type>`: a presigned-style PUT
//!   that refuses any other `Content-Type` with 403, as S3/MinIO do.
//! * `GET /storage/<key>`: serves bundles (with an MD5 ETag), with
//!   injectable 5xx / 404 answers.
//! * `GET /submission_input/<pk>/<id>/<secret>/?kind=...`: WebSocket that
//!   accepts only the right secret and records text frames; it answers
//!   pings (as every WebSocket server must) and can drop a connection
//!   mid-stream and refuse reconnections for a while, as a site restart
//!   or a proxy reset would.
//!
//! ```ignore
//! let site = FakeSite::start(1234, 7).await;
//! let api = site.api_url();              // run_args.submissions_api_url
//! site.add_bundle("submission.zip", bytes);
//! let get = site.get_url("submission.zip");
//! let put = site.put_url("prediction_result.zip", "application/zip");
//! site.fail_status("Scoring", 500, 1);  // next Scoring PATCH answers 500
//! ... site.statuses(), site.uploads(), site.scores(), site.ws_frames()
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use md5::{Digest, Md5};
use serde_json::{json, Value};

pub const SECRET: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// Which Codabench the fake site plays when it builds a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteVersion {
    /// Up to v1.26: `program_data`, `ingestion_program`.
    V126,
    /// v1.27 and later (with #2443): `submission_data` in both steps,
    /// `ingestion_program_data`, `scoring_program_data`, `human_in_the_loop`.
    V127,
}

/// One recorded PATCH: the form fields in the order sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub submission_id: u64,
    pub fields: Vec<(String, String)>,
    pub content_type: String,
    /// When the site received it.
    pub at: std::time::Instant,
}

impl Patch {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One recorded PUT.
#[derive(Debug, Clone)]
pub struct Upload {
    pub key: String,
    pub content_type: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When the site received it.
    pub at: std::time::Instant,
}

/// One recorded WebSocket text frame.
#[derive(Debug, Clone)]
pub struct WsFrame {
    pub submission_id: u64,
    pub query_kind: Option<String>,
    pub frame: Value,
}

#[derive(Default)]
struct Inner {
    secret: String,
    patches: Vec<Patch>,
    rejected_patches: Vec<(u16, Vec<(String, String)>)>,
    scores: Vec<Value>,
    uploads: Vec<Upload>,
    frames: Vec<WsFrame>,
    bundles: HashMap<String, (Vec<u8>, bool)>,
    /// `Scoring` PATCHes that queued the scoring step: Codabench queues it
    /// before it saves the status, so even one it then answers with an
    /// error has queued it.
    scorings_queued: u32,
    /// status value → (HTTP code, how many more times)
    status_failures: HashMap<String, (u16, u32)>,
    /// bundle key → (HTTP code, how many more times)
    get_failures: HashMap<String, (u16, u32)>,
    gets: HashMap<String, u32>,
    ws_delay_ms: u64,
    /// WebSocket connections accepted.
    ws_connections: u32,
    /// (after this many recorded frames in all, refuse this many upgrades)
    ws_drop: Option<(usize, u32)>,
    /// Upgrades still to refuse with 503.
    ws_refuse: u32,
}

#[derive(Clone)]
pub struct FakeSite {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    pub submission_id: u64,
    pub user_pk: u64,
}

impl FakeSite {
    /// Start on a free port; the submission's secret is [`SECRET`].
    pub async fn start(submission_id: u64, user_pk: u64) -> FakeSite {
        let inner = Arc::new(Mutex::new(Inner {
            secret: SECRET.into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/api/submissions/{id}/", patch(patch_submission))
            .route("/api/upload_submission_scores/{id}/", post(post_scores))
            .route("/storage/{*key}", get(get_object).put(put_object))
            .route("/submission_input/{pk}/{id}/{secret}/", get(websocket))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeSite {
            addr,
            inner,
            submission_id,
            user_pk,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `run_args.submissions_api_url`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.url())
    }
    pub fn secret(&self) -> String {
        self.inner.lock().unwrap().secret.clone()
    }

    /// Serve `bytes` at `/storage/<key>`, with an MD5 ETag (set
    /// `corrupt_etag` to advertise a wrong one).
    pub fn add_bundle(&self, key: &str, bytes: Vec<u8>) {
        self.inner
            .lock()
            .unwrap()
            .bundles
            .insert(key.into(), (bytes, false));
    }
    pub fn add_bundle_with_wrong_etag(&self, key: &str, bytes: Vec<u8>) {
        self.inner
            .lock()
            .unwrap()
            .bundles
            .insert(key.into(), (bytes, true));
    }
    /// A presigned-style GET URL.
    pub fn get_url(&self, key: &str) -> String {
        format!("{}/storage/{key}?X-Amz-Signature=get", self.url())
    }
    /// A presigned-style PUT URL signed for `content_type`.
    pub fn put_url(&self, key: &str, content_type: &str) -> String {
        let ct: String = url::form_urlencoded::byte_serialize(content_type.as_bytes()).collect();
        format!(
            "{}/storage/{key}?X-Amz-Signature=put&content-type={ct}",
            self.url()
        )
    }

    /// The next `times` PATCHes with `status=<status>` answer `code`.
    pub fn fail_status(&self, status: &str, code: u16, times: u32) {
        self.inner
            .lock()
            .unwrap()
            .status_failures
            .insert(status.into(), (code, times));
    }
    /// The next `times` GETs of `key` answer `code`.
    pub fn fail_get(&self, key: &str, code: u16, times: u32) {
        self.inner
            .lock()
            .unwrap()
            .get_failures
            .insert(key.into(), (code, times));
    }
    /// Make the WebSocket server slow: sleep this long after each frame.
    pub fn slow_websocket(&self, ms: u64) {
        self.inner.lock().unwrap().ws_delay_ms = ms;
    }

    /// Drop the WebSocket connection abruptly (no close frame) once
    /// `frames` frames have been recorded in all (whatever was in flight
    /// behind the last one is lost, as with a real reset), then answer the
    /// next `refuse` connection attempts with 503 (the site restarting).
    pub fn drop_websocket_after(&self, frames: usize, refuse: u32) {
        self.inner.lock().unwrap().ws_drop = Some((frames, refuse));
    }
    /// Answer the next `times` WebSocket connection attempts with 503 (the
    /// site is away).
    pub fn refuse_websocket(&self, times: u32) {
        self.inner.lock().unwrap().ws_refuse = times;
    }
    /// WebSocket connections accepted so far.
    pub fn ws_connections(&self) -> u32 {
        self.inner.lock().unwrap().ws_connections
    }

    /// The `run_args` the real site's `_send_to_compute_worker` builds for
    /// this submission (codabench-protocol.md §2, -v127.md §2): program
    /// keys only for the bundles the site holds (`submission.zip`,
    /// `ingestion_program.zip`, `input_data.zip`, `reference_data.zip`,
    /// `scoring_program.zip`), detailed results enabled, no
    /// ingestion-only-during-scoring, no human in the loop.
    pub fn task(&self, version: SiteVersion, is_scoring: bool, image: &str, limit: u64) -> Value {
        let has = |k: &str| self.inner.lock().unwrap().bundles.contains_key(k);
        let step = if is_scoring { "scoring" } else { "prediction" };
        let mut t = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            t.insert(k.to_string(), v);
        };
        put("user_pk", json!(self.user_pk));
        put("submissions_api_url", json!(self.api_url()));
        put("secret", json!(SECRET));
        put("docker_image", json!(image));
        put("execution_time_limit", json!(limit));
        put("id", json!(self.submission_id));
        put("is_scoring", json!(is_scoring));
        if version == SiteVersion::V127 {
            put("human_in_the_loop", json!(false));
        }
        if is_scoring {
            put(
                "detailed_results_url",
                json!(self.put_url("detailed_results.html", "text/html")),
            );
            put(
                "prediction_result",
                json!(self.get_url("prediction_result.zip")),
            );
            put(
                "scoring_result",
                json!(self.put_url("scoring_result.zip", "application/zip")),
            );
        } else {
            put(
                "prediction_result",
                json!(self.put_url("prediction_result.zip", "application/zip")),
            );
            if has("ingestion_program.zip") {
                let key = match version {
                    SiteVersion::V126 => "ingestion_program",
                    SiteVersion::V127 => "ingestion_program_data",
                };
                put(key, json!(self.get_url("ingestion_program.zip")));
            }
            if has("input_data.zip") {
                put("input_data", json!(self.get_url("input_data.zip")));
            }
        }
        if is_scoring && has("reference_data.zip") {
            put("reference_data", json!(self.get_url("reference_data.zip")));
        }
        put("ingestion_only_during_scoring", json!(false));
        match (version, is_scoring) {
            (SiteVersion::V126, false) => {
                put("program_data", json!(self.get_url("submission.zip")))
            }
            (SiteVersion::V126, true) => {
                put("program_data", json!(self.get_url("scoring_program.zip")))
            }
            (SiteVersion::V127, _) => {
                if is_scoring {
                    put(
                        "scoring_program_data",
                        json!(self.get_url("scoring_program.zip")),
                    );
                }
                put("submission_data", json!(self.get_url("submission.zip")));
            }
        }
        for log in ["stdout", "stderr", "ingestion_stdout", "ingestion_stderr"] {
            let key = format!("{step}_{log}");
            put(
                &key,
                json!(self.put_url(&format!("{key}.txt"), "application/zip")),
            );
        }
        Value::Object(t)
    }

    /// Accepted PATCHes, in order.
    pub fn patches(&self) -> Vec<Patch> {
        self.inner.lock().unwrap().patches.clone()
    }
    /// The failure report (the PATCH with a `type`); panics without one.
    pub fn failure_report(&self) -> Patch {
        self.patches()
            .into_iter()
            .find(|p| p.get("type").is_some())
            .expect("a failure report")
    }
    /// `status_details` of the last `Failed` PATCH; panics without one.
    pub fn failed_details(&self) -> String {
        self.patches()
            .into_iter()
            .rev()
            .find(|p| p.get("status") == Some("Failed"))
            .and_then(|p| p.get("status_details").map(str::to_string))
            .expect("a Failed status with details")
    }
    /// The `status` values of accepted PATCHes, in order.
    /// `status_details` of the last PATCH (the message a participant reads).
    pub fn last_details(&self) -> String {
        self.patches()
            .last()
            .and_then(|p| p.get("status_details"))
            .unwrap_or_default()
            .to_string()
    }
    pub fn statuses(&self) -> Vec<String> {
        self.patches()
            .iter()
            .filter_map(|p| p.get("status").map(str::to_string))
            .collect()
    }
    /// How many times the scoring step was queued (see `Inner`).
    pub fn scorings_queued(&self) -> u32 {
        self.inner.lock().unwrap().scorings_queued
    }
    /// PATCHes answered with an error: (HTTP code, fields).
    pub fn rejected_patches(&self) -> Vec<(u16, Vec<(String, String)>)> {
        self.inner.lock().unwrap().rejected_patches.clone()
    }
    pub fn scores(&self) -> Vec<Value> {
        self.inner.lock().unwrap().scores.clone()
    }
    pub fn uploads(&self) -> Vec<Upload> {
        self.inner.lock().unwrap().uploads.clone()
    }
    pub fn upload(&self, key: &str) -> Option<Upload> {
        self.uploads().into_iter().rev().find(|u| u.key == key)
    }
    pub fn ws_frames(&self) -> Vec<WsFrame> {
        self.inner.lock().unwrap().frames.clone()
    }
    /// Whether a recorded `kind` frame's message contains `text`.
    pub fn has_line(&self, kind: &str, text: &str) -> bool {
        self.ws_frames().iter().any(|f| {
            f.frame["kind"] == kind
                && f.frame["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
        })
    }
    /// Wait (up to 10 s) until the recorded frames satisfy `done`, then
    /// return them: the server records frames asynchronously.
    pub async fn ws_frames_when(&self, done: impl Fn(&[WsFrame]) -> bool) -> Vec<WsFrame> {
        for _ in 0..200 {
            let f = self.ws_frames();
            if done(&f) {
                return f;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.ws_frames()
    }
    /// How many GETs `key` received.
    pub fn get_count(&self, key: &str) -> u32 {
        self.inner
            .lock()
            .unwrap()
            .gets
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

type St = State<Arc<Mutex<Inner>>>;

#[allow(clippy::result_large_err)]
fn secret_check(expected: &str, given: Option<&str>) -> Result<(), Response> {
    let forbidden = || {
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"detail": "Submission secrets do not match"})),
        )
            .into_response()
    };
    let given = given.ok_or_else(forbidden)?;
    // The real view does uuid.UUID(secret): a non-UUID string is a 500.
    let parsed = uuid::Uuid::try_parse(given).map_err(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "ValueError: badly formed hexadecimal UUID string",
        )
            .into_response()
    })?;
    if parsed.hyphenated().to_string() != expected {
        return Err(forbidden());
    }
    Ok(())
}

async fn patch_submission(
    State(st): St,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        // DRF would parse JSON too, but a JSON null status_details crashes
        // the real view; the worker must send forms. Refuse anything else.
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a form, got {ct}"),
        )
            .into_response();
    }
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    };
    let mut inner = st.lock().unwrap();
    if let Err(resp) = secret_check(&inner.secret, get("secret")) {
        let code = resp.status().as_u16();
        inner.rejected_patches.push((code, fields.clone()));
        return resp;
    }
    if get("status") == Some("Scoring") {
        inner.scorings_queued += 1;
    }
    if let Some(status) = get("status") {
        if let Some((code, left)) = inner.status_failures.get_mut(status) {
            if *left > 0 {
                *left -= 1;
                let code = *code;
                inner.rejected_patches.push((code, fields.clone()));
                return (StatusCode::from_u16(code).unwrap(), "injected failure").into_response();
            }
        }
    }
    inner.patches.push(Patch {
        submission_id: id,
        fields: fields.clone(),
        content_type: ct,
        at: std::time::Instant::now(),
    });
    axum::Json(json!({"id": id, "status": get("status")})).into_response()
}

async fn post_scores(State(st): St, Path(_id): Path<u64>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "JSON parse error").into_response();
    };
    let mut inner = st.lock().unwrap();
    if let Err(r) = secret_check(&inner.secret, v.get("secret").and_then(Value::as_str)) {
        return r;
    }
    let Some(scores) = v.get("scores") else {
        return (StatusCode::BAD_REQUEST, "scores required").into_response();
    };
    inner.scores.push(scores.clone());
    StatusCode::CREATED.into_response()
}

async fn put_object(
    State(st): St,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sent = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let signed = q
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/zip".into());
    if sent != signed {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>SignatureDoesNotMatch</Code></Error>",
        )
            .into_response();
    }
    let mut inner = st.lock().unwrap();
    // Like object storage: what was PUT can be fetched with a GET.
    inner.bundles.insert(key.clone(), (body.to_vec(), false));
    inner.uploads.push(Upload {
        key,
        content_type: sent,
        headers,
        body: body.to_vec(),
        at: std::time::Instant::now(),
    });
    StatusCode::OK.into_response()
}

async fn get_object(State(st): St, Path(key): Path<String>) -> Response {
    let mut inner = st.lock().unwrap();
    *inner.gets.entry(key.clone()).or_default() += 1;
    if let Some((code, left)) = inner.get_failures.get_mut(&key) {
        if *left > 0 {
            *left -= 1;
            return StatusCode::from_u16(*code).unwrap().into_response();
        }
    }
    match inner.bundles.get(&key) {
        Some((bytes, wrong_etag)) => {
            let md5 = if *wrong_etag {
                "0123456789abcdef0123456789abcdef".to_string()
            } else {
                hex::encode(Md5::digest(bytes))
            };
            ([("etag", format!("\"{md5}\""))], bytes.clone()).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

async fn websocket(
    State(st): St,
    Path((_pk, id, secret)): Path<(u64, u64, String)>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let kind = q.get("kind").cloned();
    {
        let mut inner = st.lock().unwrap();
        if inner.ws_refuse > 0 {
            inner.ws_refuse -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "restarting").into_response();
        }
    }
    ws.on_upgrade(move |mut socket| async move {
        if st.lock().unwrap().secret != secret {
            // The real consumer closes connections whose secret is wrong.
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        st.lock().unwrap().ws_connections += 1;
        // `recv` answers pings itself.
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(t) => {
                    let (delay, drop_now) = {
                        let mut inner = st.lock().unwrap();
                        let frame = serde_json::from_str(t.as_str())
                            .unwrap_or(Value::String(t.to_string()));
                        inner.frames.push(WsFrame {
                            submission_id: id,
                            query_kind: kind.clone(),
                            frame,
                        });
                        let drop_now = match inner.ws_drop {
                            Some((n, refuse)) if inner.frames.len() >= n => {
                                inner.ws_drop = None;
                                inner.ws_refuse = refuse;
                                true
                            }
                            _ => false,
                        };
                        (inner.ws_delay_ms, drop_now)
                    };
                    if drop_now {
                        // Dropped without a close frame: a reset.
                        return;
                    }
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}
