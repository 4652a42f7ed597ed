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
//! background task connects (and reconnects with backoff) and sends queued
//! frames in order.
//!
//! No line is lost when the connection blips: frames written to a socket
//! the site has already dropped vanish without an error, so a sent frame
//! is kept until the site confirms it. After sending, the task pings; the
//! site's pong (which a WebSocket server sends after reading everything
//! before the ping) confirms every frame sent before it. When the
//! connection breaks, unconfirmed frames are sent again first on the next
//! connection: the viewer may see a line twice around a blip, never a gap.
//! Kept frames (queued or unconfirmed) are bounded in number and bytes;
//! past the bound the oldest are dropped and the viewer is told how many
//! in a marker frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

/// Which live channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// Legacy sites: the submission (prediction) or scoring program.
    Program,
    /// Legacy sites: the ingestion program.
    Ingestion,
    /// Sites from v1.27 on: the ingestion program.
    IngestionProgram,
    /// Sites from v1.27 on: the scoring program.
    ScoringProgram,
    DetailedResults,
    ErrorLogs,
}

impl LiveKind {
    /// The `?kind=` query value.
    pub fn query(self) -> &'static str {
        match self {
            LiveKind::Program => "program",
            LiveKind::Ingestion => "ingestion",
            LiveKind::IngestionProgram => "ingestion_program",
            LiveKind::ScoringProgram => "scoring_program",
            LiveKind::DetailedResults => "detailed_results",
            LiveKind::ErrorLogs => "error_logs",
        }
    }

    /// The frame for one message.
    pub fn frame(self, message: &str) -> Value {
        match self {
            LiveKind::Program
            | LiveKind::Ingestion
            | LiveKind::IngestionProgram
            | LiveKind::ScoringProgram => json!({"kind": self.query(), "message": message}),
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
    /// Frames kept while the site is slow or unreachable, the sent but
    /// unconfirmed ones included.
    pub buffer: usize,
    /// Bytes those frames may hold (a line can be up to 64 KiB).
    pub buffer_bytes: usize,
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
            buffer_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(10),
        }
    }
}

/// Ask the site to confirm at least every this many frames.
const PING_EVERY: u64 = 100;

#[derive(Default)]
struct Queue {
    /// Sent on the current connection, not confirmed yet: (send number,
    /// frame), oldest first.
    unconfirmed: VecDeque<(u64, String)>,
    /// Not sent yet.
    pending: VecDeque<String>,
    /// Bytes of both.
    bytes: usize,
    /// Frames dropped unsent because the bound was reached.
    dropped: u64,
    closed: bool,
}

impl Queue {
    /// Make room for one more frame of `len` bytes: forget the oldest
    /// unconfirmed frames first (they were sent), then drop the oldest
    /// pending ones.
    fn make_room(&mut self, frames: usize, bytes: usize, len: usize) {
        while self.unconfirmed.len() + self.pending.len() >= frames || self.bytes + len > bytes {
            if let Some((_, f)) = self.unconfirmed.pop_front() {
                self.bytes -= f.len();
            } else if let Some(f) = self.pending.pop_front() {
                self.bytes -= f.len();
                self.dropped += 1;
            } else {
                break;
            }
        }
    }

    /// The site confirmed every frame up to send number `upto`.
    fn confirm(&mut self, upto: u64) {
        while self.unconfirmed.front().is_some_and(|(n, _)| *n <= upto) {
            if let Some((_, f)) = self.unconfirmed.pop_front() {
                self.bytes -= f.len();
            }
        }
    }

    /// The connection broke: what it did not confirm goes out again first.
    fn requeue_unconfirmed(&mut self) {
        while let Some((_, f)) = self.unconfirmed.pop_back() {
            self.pending.push_front(f);
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    kind: LiveKind,
    buffer: usize,
    buffer_bytes: usize,
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
            buffer_bytes: cfg.buffer_bytes,
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
            q.make_room(self.shared.buffer, self.shared.buffer_bytes, text.len());
            q.bytes += text.len();
            q.pending.push_back(text);
        }
        self.shared.wake.notify_one();
    }

    /// Frames dropped so far because the site was too slow or away.
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

/// What the pump remembers across connections.
struct Progress {
    /// Frames sent so far (numbers the pings).
    sent: u64,
    /// Drops already announced to the viewer.
    announced: u64,
}

async fn pump(url: String, shared: Arc<Shared>, cfg: LiveConfig) {
    let mut delay = cfg.reconnect_min;
    let shown = super::redact_secret_path(&url);
    let mut progress = Progress {
        sent: 0,
        announced: 0,
    };
    loop {
        {
            let q = shared.queue.lock().unwrap();
            if q.closed
                && q.pending.is_empty()
                && q.unconfirmed.is_empty()
                && q.dropped == progress.announced
            {
                return;
            }
        }
        let conn = tokio::time::timeout(
            cfg.connect_timeout,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let confirmed = match conn {
            Ok(Ok((ws, _))) => {
                debug!("live log connected to {shown}");
                match stream(ws, &shared, &mut progress).await {
                    Ok(()) => return,
                    Err((why, confirmed)) => {
                        shared.queue.lock().unwrap().requeue_unconfirmed();
                        warn!("live log to {shown} broke: {why}; reconnecting");
                        confirmed
                    }
                }
            }
            Ok(Err(e)) => {
                warn!("live log: cannot connect to {shown} ({e}); retrying in {delay:?}");
                false
            }
            Err(_) => {
                warn!("live log: cannot connect to {shown} (timed out); retrying in {delay:?}");
                false
            }
        };
        // A connection that worked is retried at once; one that did not
        // (refused, or dropped before confirming anything) backs off.
        if confirmed {
            delay = cfg.reconnect_min;
        } else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(cfg.reconnect_max);
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Send queued frames on one connection until the log is closed and the
/// site has confirmed everything (`Ok`), or the connection breaks
/// (`Err((why, whether the site confirmed anything))`).
async fn stream(ws: Ws, shared: &Shared, progress: &mut Progress) -> Result<(), (String, bool)> {
    let (mut sink, mut incoming) = ws.split();
    let mut pinged = progress.sent;
    let mut confirmed = false;
    let broke = |why: String, confirmed: bool| (why, confirmed);
    loop {
        // Take in what the site said meanwhile (pongs), without waiting.
        while let Some(msg) = incoming.next().now_or_never() {
            confirmed |= on_incoming(msg, shared).map_err(|why| broke(why, confirmed))?;
        }
        let (next, done) = {
            let mut q = shared.queue.lock().unwrap();
            let next = if q.dropped > progress.announced {
                let marker = dropped_marker(shared.kind, q.dropped - progress.announced);
                progress.announced = q.dropped;
                q.bytes += marker.len();
                Some(marker)
            } else {
                q.pending.pop_front()
            };
            if let Some(text) = &next {
                progress.sent += 1;
                q.unconfirmed.push_back((progress.sent, text.clone()));
            }
            let done = q.closed && q.pending.is_empty() && q.unconfirmed.is_empty();
            (next, done)
        };
        if let Some(text) = next {
            sink.send(Message::text(text))
                .await
                .map_err(|e| broke(e.to_string(), confirmed))?;
            if progress.sent - pinged >= PING_EVERY {
                pinged = progress.sent;
                sink.send(ping(pinged))
                    .await
                    .map_err(|e| broke(e.to_string(), confirmed))?;
            }
            continue;
        }
        if done {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(());
        }
        // All sent: ask the site to confirm it, then wait for its answer
        // or for more frames.
        if progress.sent > pinged {
            pinged = progress.sent;
            sink.send(ping(pinged))
                .await
                .map_err(|e| broke(e.to_string(), confirmed))?;
        }
        tokio::select! {
            msg = incoming.next() => {
                confirmed |= on_incoming(msg, shared).map_err(|why| broke(why, confirmed))?;
            }
            _ = shared.wake.notified() => {}
        }
    }
}

/// A ping asking the site to confirm frames up to send number `n`.
fn ping(n: u64) -> Message {
    Message::Ping(n.to_be_bytes().to_vec().into())
}

/// Handle one incoming message: `Ok(true)` when it confirmed frames, an
/// error when the connection is over.
fn on_incoming(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    shared: &Shared,
) -> Result<bool, String> {
    match msg {
        None | Some(Ok(Message::Close(_))) => Err("the site closed the connection".to_string()),
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(Message::Pong(p))) => match <[u8; 8]>::try_from(p.as_ref()) {
            Ok(n) => {
                shared.queue.lock().unwrap().confirm(u64::from_be_bytes(n));
                Ok(true)
            }
            Err(_) => Ok(false),
        },
        Some(Ok(_)) => Ok(false),
    }
}
