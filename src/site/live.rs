//! Live logs to the site over WebSocket.
//!
//! URL: `ws://` for an `http` API URL, else `wss://`, then
//! `<api host>/submission_input/<user_pk>/<id>/<secret>/?kind=<kind>` (at
//! the host root, not under `/api`). Frames are JSON text:
//!
//! | [`LiveKind`] | `?kind=` | frame |
//! |---|---|---|
//! | `Program` | `program` | `{"kind": "program", "message": line}` |
//! | `Ingestion` | `ingestion` | `{"kind": "ingestion", "message": line}` |
//! | `DetailedResults` | `detailed_results` | `{"kind": "detailed_result_update"}` |
//! | `ErrorLogs` | `error_logs` | `{"kind": "stderr", "message": text}` |
//!
//! A [`LiveLog`] never blocks the job: [`LiveLog::send`] only queues. A
//! background task connects (and reconnects with backoff), sends queued
//! frames in order, and when the queue is full drops the oldest frames,
//! telling the viewer how many were dropped in a marker frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

/// Which live channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    Program,
    Ingestion,
    DetailedResults,
    ErrorLogs,
}

impl LiveKind {
    /// The `?kind=` query value.
    pub fn query(self) -> &'static str {
        match self {
            LiveKind::Program => "program",
            LiveKind::Ingestion => "ingestion",
            LiveKind::DetailedResults => "detailed_results",
            LiveKind::ErrorLogs => "error_logs",
        }
    }

    /// The frame for one message.
    pub fn frame(self, message: &str) -> Value {
        match self {
            LiveKind::Program => json!({"kind": "program", "message": message}),
            LiveKind::Ingestion => json!({"kind": "ingestion", "message": message}),
            LiveKind::DetailedResults => json!({"kind": "detailed_result_update"}),
            LiveKind::ErrorLogs => json!({"kind": "stderr", "message": message}),
        }
    }
}

/// The WebSocket URL for a submission, derived from the API URL.
pub fn live_url(
    api_url: &str,
    user_pk: u64,
    submission_id: u64,
    secret: &str,
    kind: LiveKind,
) -> Result<String, String> {
    let u = url::Url::parse(api_url).map_err(|e| format!("bad API URL {api_url}: {e}"))?;
    let scheme = if u.scheme() == "http" { "ws" } else { "wss" };
    let host = u
        .host_str()
        .ok_or_else(|| format!("API URL {api_url} has no host"))?;
    let host = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(format!(
        "{scheme}://{host}/submission_input/{user_pk}/{submission_id}/{secret}/?kind={}",
        kind.query()
    ))
}

/// Tuning for a [`LiveLog`].
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Frames kept while the site is slow or unreachable.
    pub buffer: usize,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long [`LiveLog::close`] waits to flush what is queued.
    pub flush_timeout: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            buffer: 10_000,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<String>,
    dropped: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    kind: LiveKind,
    buffer: usize,
}

/// One live channel to the site.
pub struct LiveLog {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    flush_timeout: Duration,
}

impl LiveLog {
    /// Start streaming to `url` (see [`live_url`]). Returns at once.
    pub fn start(url: String, kind: LiveKind, cfg: LiveConfig) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Notify::new(),
            kind,
            buffer: cfg.buffer.max(1),
        });
        let task = tokio::spawn(pump(url, shared.clone(), cfg));
        LiveLog {
            shared,
            task,
            flush_timeout: cfg.flush_timeout,
        }
    }

    /// Queue one message (a log line, an error text; ignored for
    /// `DetailedResults`, whose frame has no message). Never waits.
    pub fn send(&self, message: &str) {
        self.push(self.shared.kind.frame(message).to_string());
    }

    /// Queue a raw JSON frame.
    pub fn send_frame(&self, frame: &Value) {
        self.push(frame.to_string());
    }

    fn push(&self, text: String) {
        {
            let mut q = self.shared.queue.lock().unwrap();
            if q.frames.len() >= self.shared.buffer {
                q.frames.pop_front();
                q.dropped += 1;
            }
            q.frames.push_back(text);
        }
        self.shared.wake.notify_one();
    }

    /// Frames dropped so far because the site was too slow.
    pub fn dropped(&self) -> u64 {
        self.shared.queue.lock().unwrap().dropped
    }

    /// Flush what is queued (up to the flush timeout) and close.
    pub async fn close(self) {
        self.shared.queue.lock().unwrap().closed = true;
        self.shared.wake.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(self.flush_timeout, &mut task)
            .await
            .is_err()
        {
            warn!("live log: site did not take the last frames in time; giving up");
            task.abort();
        }
    }
}

fn dropped_marker(kind: LiveKind, n: u64) -> String {
    kind.frame(&format!(
        "[compute-worker] {n} log messages were dropped here because the site was not keeping up"
    ))
    .to_string()
}

async fn pump(url: String, shared: Arc<Shared>, cfg: LiveConfig) {
    let mut delay = cfg.reconnect_min;
    let shown = super::redact_secret_path(&url);
    // Drops already counted, and drops not yet announced to the viewer.
    let mut counted = 0u64;
    let mut unannounced = 0u64;
    'connect: loop {
        {
            let q = shared.queue.lock().unwrap();
            if q.closed && q.frames.is_empty() && q.dropped == counted && unannounced == 0 {
                return;
            }
        }
        let conn = tokio::time::timeout(
            cfg.connect_timeout,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut ws = match conn {
            Ok(Ok((ws, _))) => {
                debug!("live log connected to {shown}");
                delay = cfg.reconnect_min;
                ws
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if shared.queue.lock().unwrap().closed {
                    warn!("live log: cannot connect to {shown} ({why}); dropping the rest");
                    return;
                }
                warn!("live log: cannot connect to {shown} ({why}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cfg.reconnect_max);
                continue;
            }
        };
        loop {
            let (frame, closed) = {
                let mut q = shared.queue.lock().unwrap();
                unannounced += q.dropped - counted;
                counted = q.dropped;
                let frame = if unannounced > 0 {
                    None
                } else {
                    q.frames.pop_front()
                };
                (frame, q.closed)
            };
            if unannounced > 0 {
                let marker = dropped_marker(shared.kind, unannounced);
                if let Err(e) = ws.send(Message::text(marker)).await {
                    warn!("live log to {shown} broke: {e}; reconnecting");
                    continue 'connect;
                }
                unannounced = 0;
                continue;
            }
            match frame {
                Some(text) => {
                    if let Err(e) = ws.send(Message::text(text.clone())).await {
                        warn!("live log to {shown} broke: {e}; reconnecting");
                        let mut q = shared.queue.lock().unwrap();
                        if q.frames.len() < shared.buffer {
                            q.frames.push_front(text);
                        } else {
                            q.dropped += 1;
                        }
                        continue 'connect;
                    }
                }
                None if closed => {
                    let _ = ws.close(None).await;
                    return;
                }
                None => shared.wake.notified().await,
            }
        }
    }
}
