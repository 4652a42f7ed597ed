//! The RabbitMQ consumer: Celery's topology, N job slots, late acks,
//! revoke through `celery.pidbox`, reconnection with backoff.
//!
//! * Topology, declared exactly as Celery/kombu declare it (a mismatch
//!   would make RabbitMQ refuse the site's own declarations): durable
//!   queue `<queue>` with `x-max-priority` = 10 (signed 32-bit), durable
//!   direct exchange `<queue>`, binding key `<queue>`. `<queue>` is
//!   `compute-worker` unless configured.
//! * Each slot has its own channel with prefetch 1, so a worker with N
//!   slots holds at most N unacknowledged jobs. A job is acknowledged only
//!   when the [`JobHandler`] returns (also on failure, like Celery's
//!   `acks_late`), so a job whose worker dies is redelivered.
//! * Revoke: an exclusive auto-delete queue bound to the fanout exchange
//!   `celery.pidbox` receives `{"method": "revoke", "arguments":
//!   {"task_id": ..., "terminate": true}}` from the site's
//!   `Submission.cancel()`. Revoked ids are kept (bounded) so later
//!   deliveries of them are dropped; a running job's [`Job::cancel`] token
//!   is cancelled and every revoke is broadcast to
//!   [`Consumer::revocations`] subscribers.
//! * A delivery whose task id is already running here (the broker
//!   redelivered it after our connection dropped) does not start a second
//!   run: the slot holds it until the running one finishes, then acks it.
//!   A job that finished but whose ack was lost with its channel is
//!   remembered, so its redelivery is acknowledged without running again.
//! * Connection loss: running jobs keep running; the connection is
//!   re-established with exponential backoff and the idle slots resume.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::celery::{self, TaskMessage};
use super::url::{BrokerUrl, TlsMode};

/// Name of Celery's remote-control fanout exchange.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// Codabench's queue (and exchange, and routing key) name.
pub const DEFAULT_QUEUE: &str = "compute-worker";

/// How many revoked / finished task ids are remembered.
const REMEMBERED_IDS: usize = 10_000;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub broker: BrokerUrl,
    /// Queue, exchange and routing key name (`compute-worker`).
    pub queue: String,
    /// Jobs run at the same time (each on its own channel, prefetch 1).
    pub slots: usize,
    /// Celery node name (`compute-worker@<hostname>`): revokes addressed to
    /// other nodes are ignored, and it names the pidbox queue.
    pub node_name: String,
    /// AMQP heartbeat in seconds (Celery asks for 120).
    pub heartbeat: u16,
    /// Reconnection backoff: first delay, doubled up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Client-provided connection name shown by RabbitMQ.
    pub connection_name: String,
    /// With [`TlsMode::Verify`]: trust only the CA certificates in this PEM
    /// file (a private CA) instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl ConsumerConfig {
    /// Defaults for a broker: queue `compute-worker`, 1 slot, heartbeat
    /// 120 s, reconnect 1 s .. 30 s.
    pub fn new(broker: BrokerUrl) -> Self {
        let host = hostname();
        ConsumerConfig {
            broker,
            queue: DEFAULT_QUEUE.to_string(),
            slots: 1,
            node_name: format!("compute-worker@{host}"),
            heartbeat: 120,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            connection_name: format!("compute-worker@{host}"),
            tls_ca_file: None,
        }
    }
}

/// This machine's host name (as `socket.gethostname()`).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One job handed to the [`JobHandler`].
#[derive(Debug, Clone)]
pub struct Job {
    pub message: TaskMessage,
    /// Cancelled when the site revokes this task (cancel the submission):
    /// the handler must kill the sandboxes and return.
    pub cancel: CancellationToken,
    /// The broker's redelivered flag (another worker, or this one before a
    /// reconnect, had it unacknowledged).
    pub redelivered: bool,
    /// When the Celery soft time limit (`timelimit[1]`) runs out, counted
    /// from receipt. The handler should fail the job at this point.
    pub deadline: Option<Instant>,
}

/// What to do with a job's message once its handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done (successfully or not, and reported): acknowledge it.
    Ack,
    /// Not done and not reported (the worker is shutting down and killed
    /// it): give it back to the broker so that a worker runs it again.
    Requeue,
}

impl From<()> for Disposition {
    fn from(_: ()) -> Self {
        Disposition::Ack
    }
}

/// Runs jobs. The message is settled as the returned future says when it
/// ends.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: Job) -> Pin<Box<dyn Future<Output = Disposition> + Send + 'static>>;
}

impl<F, Fut, O> JobHandler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: Into<Disposition> + 'static,
{
    fn handle(&self, job: Job) -> Pin<Box<dyn Future<Output = Disposition> + Send + 'static>> {
        let fut = self(job);
        Box::pin(async move { fut.await.into() })
    }
}

/// A revoke received from the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub task_id: String,
    /// `terminate=True` (always, from Codabench): kill the running job.
    pub terminate: bool,
    /// Whether the task was running here when the revoke arrived.
    pub was_running: bool,
}

/// Errors at the broker edge.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("AMQP error talking to {broker}: {source}")]
    Amqp {
        broker: String,
        #[source]
        source: lapin::Error,
    },
    #[error("TLS to {broker} failed: {reason}")]
    Tls { broker: String, reason: String },
    #[error("connection to {0} was lost")]
    ConnectionLost(String),
}

/// A bounded set that forgets its oldest entries.
#[derive(Debug, Default)]
struct BoundedSet {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl BoundedSet {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > REMEMBERED_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

struct Running {
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
    revoked: BoundedSet,
    finished_unacked: BoundedSet,
}

/// The consumer. Create it, subscribe to [`Consumer::revocations`] if
/// needed, then drive [`Consumer::run`].
#[derive(Clone)]
pub struct Consumer {
    cfg: Arc<ConsumerConfig>,
    state: Arc<Mutex<State>>,
    revocations: broadcast::Sender<Revocation>,
    conn: watch::Sender<Option<(u64, Arc<Connection>)>>,
}

impl Consumer {
    pub fn new(cfg: ConsumerConfig) -> Self {
        let (revocations, _) = broadcast::channel(256);
        let (conn, _) = watch::channel(None);
        Consumer {
            cfg: Arc::new(cfg),
            state: Arc::default(),
            revocations,
            conn,
        }
    }

    /// Every revoke this worker receives (whether or not the task is here).
    pub fn revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// Task ids running right now.
    pub fn running(&self) -> Vec<String> {
        self.state.lock().unwrap().running.keys().cloned().collect()
    }

    /// Whether `task_id` was revoked.
    pub fn is_revoked(&self, task_id: &str) -> bool {
        self.state.lock().unwrap().revoked.contains(task_id)
    }

    /// Consume until `shutdown` is cancelled. On shutdown no new job is
    /// taken; running jobs are awaited (and acknowledged) before returning.
    /// Connection failures are retried forever with backoff.
    pub async fn run<H: JobHandler>(&self, handler: Arc<H>, shutdown: CancellationToken) {
        let mut slots = Vec::new();
        for i in 0..self.cfg.slots.max(1) {
            let this = self.clone();
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            slots.push(tokio::spawn(async move {
                this.slot(i, handler, shutdown).await
            }));
        }
        self.manage_connection(shutdown.clone()).await;
        for s in slots {
            if let Err(e) = s.await {
                error!("job slot task failed: {e}");
            }
        }
        let current = self.conn.send_replace(None);
        if let Some((_, c)) = current {
            let _ = c.close(200, "worker shutting down").await;
        }
    }

    /// Keep one connection up: connect, declare topology, consume pidbox;
    /// on loss, back off and reconnect.
    async fn manage_connection(&self, shutdown: CancellationToken) {
        let mut delay = self.cfg.reconnect_min;
        let mut generation = 0u64;
        let broker = self.cfg.broker.to_string();
        while !shutdown.is_cancelled() {
            match self.open_session().await {
                Ok((conn, _pidbox_channel, pidbox)) => {
                    let conn = Arc::new(conn);
                    generation += 1;
                    info!(%broker, queue = %self.cfg.queue, slots = self.cfg.slots, "connected to broker");
                    delay = self.cfg.reconnect_min;
                    self.conn.send_replace(Some((generation, conn.clone())));
                    let lost = self.watch_session(&conn, pidbox, &shutdown).await;
                    self.conn.send_replace(None);
                    if !lost {
                        return;
                    }
                    warn!(%broker, "lost the broker connection; running jobs continue, reconnecting");
                }
                Err(e) => {
                    error!("{e}; retrying in {delay:?}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.cfg.reconnect_max);
        }
    }

    /// Wait until the connection dies (true) or shutdown (false), handling
    /// pidbox messages meanwhile.
    async fn watch_session(
        &self,
        conn: &Connection,
        mut pidbox: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut events = conn.events_listener();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                ev = events.next() => match ev {
                    Some(lapin::Event::Error(e)) => {
                        warn!("broker connection error: {e}");
                        return true;
                    }
                    Some(_) => {}
                    None => return true,
                },
                msg = pidbox.next() => match msg {
                    Some(Ok(d)) => self.on_pidbox(&d.properties, &d.data),
                    Some(Err(e)) => {
                        warn!("revoke (pidbox) consumer failed: {e}");
                        return true;
                    }
                    None => return true,
                },
                _ = tick.tick() => {
                    if !conn.status().connected() {
                        return true;
                    }
                }
            }
        }
    }

    fn amqp_err(&self, source: lapin::Error) -> BrokerError {
        BrokerError::Amqp {
            broker: self.cfg.broker.to_string(),
            source,
        }
    }

    async fn open_session(
        &self,
    ) -> Result<(Connection, lapin::Channel, lapin::Consumer), BrokerError> {
        let conn = connect(&self.cfg).await?;
        let ch = conn.create_channel().await.map_err(|e| self.amqp_err(e))?;
        declare_topology(&ch, &self.cfg.queue)
            .await
            .map_err(|e| self.amqp_err(e))?;
        // Remote control: fanout exchange as kombu's Mailbox declares it.
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
        .await
        .map_err(|e| self.amqp_err(e))?;
        let pidbox_queue = format!(
            "{}.{}.celery.pidbox",
            self.cfg.node_name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
        ch.queue_declare(
            &pidbox_queue,
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| self.amqp_err(e))?;
        ch.queue_bind(
            &pidbox_queue,
            PIDBOX_EXCHANGE,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.amqp_err(e))?;
        let pidbox = ch
            .basic_consume(
                &pidbox_queue,
                &format!("{}-pidbox", self.cfg.node_name),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.amqp_err(e))?;
        Ok((conn, ch, pidbox))
    }

    fn on_pidbox(&self, props: &lapin::BasicProperties, body: &[u8]) {
        let headers = props
            .headers()
            .as_ref()
            .map(celery::table_to_json)
            .unwrap_or_default();
        if let Some(exp) = headers.get("expires").and_then(Value::as_f64) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            if exp < now {
                debug!("ignoring expired remote-control message");
                return;
            }
        }
        match parse_revoke(body, &self.cfg.node_name) {
            Ok(Some((ids, terminate))) => {
                for id in ids {
                    self.revoke(id, terminate);
                }
            }
            Ok(None) => debug!("ignoring remote-control message that is not a revoke for us"),
            Err(e) => warn!("ignoring malformed remote-control message: {e}"),
        }
    }

    fn revoke(&self, task_id: String, terminate: bool) {
        let was_running = {
            let mut st = self.state.lock().unwrap();
            st.revoked.insert(task_id.clone());
            match st.running.get(&task_id) {
                Some(r) => {
                    if terminate {
                        r.cancel.cancel();
                    }
                    true
                }
                None => false,
            }
        };
        info!(task_id = %task_id, was_running, "task revoked by the site");
        let _ = self.revocations.send(Revocation {
            task_id,
            terminate,
            was_running,
        });
    }

    /// One job slot: its own channel (prefetch 1) on the current
    /// connection; runs one job at a time.
    async fn slot<H: JobHandler>(
        &self,
        index: usize,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        let mut conn_rx = self.conn.subscribe();
        'outer: while !shutdown.is_cancelled() {
            // Wait for a live connection.
            let (generation, conn) = loop {
                if let Some(c) = conn_rx.borrow_and_update().clone() {
                    break c;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    r = conn_rx.changed() => if r.is_err() { break 'outer },
                }
            };
            let tag = format!("{}-slot{index}-{generation}", self.cfg.node_name);
            // Keep the channel handle alive: dropping it closes the channel.
            let (_channel, mut consumer) = match self.open_slot(&conn, &tag).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(slot = index, "cannot consume: {e}");
                    // Wait for the connection manager to notice and reconnect.
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = conn_rx.changed() => {},
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    _ = conn_rx.changed() => {
                        if matches!(&*conn_rx.borrow(), Some((g, _)) if *g == generation) {
                            continue;
                        }
                        continue 'outer;
                    }
                    d = consumer.next() => d,
                };
                match next {
                    Some(Ok(delivery)) => self.process(delivery, handler.as_ref()).await,
                    Some(Err(e)) => {
                        warn!(slot = index, "consumer failed: {e}");
                        self.wait_new_generation(&mut conn_rx, generation, &shutdown)
                            .await;
                        continue 'outer;
                    }
                    None => {
                        self.wait_new_generation(&mut conn_rx, generation, &shutdown)
                            .await;
                        continue 'outer;
                    }
                }
            }
        }
    }

    async fn wait_new_generation(
        &self,
        rx: &mut watch::Receiver<Option<(u64, Arc<Connection>)>>,
        generation: u64,
        shutdown: &CancellationToken,
    ) {
        loop {
            if !matches!(&*rx.borrow_and_update(), Some((g, _)) if *g == generation) {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    async fn open_slot(
        &self,
        conn: &Connection,
        tag: &str,
    ) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
        let ch = conn.create_channel().await.map_err(|e| self.amqp_err(e))?;
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .map_err(|e| self.amqp_err(e))?;
        let consumer = ch
            .basic_consume(
                &self.cfg.queue,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.amqp_err(e))?;
        Ok((ch, consumer))
    }

    /// Decode, de-duplicate, run and acknowledge one delivery.
    async fn process(&self, delivery: lapin::message::Delivery, handler: &dyn JobHandler) {
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(celery::table_to_json)
            .unwrap_or_default();
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string());
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_string());
        let message = match celery::decode(&headers, content_type.as_deref(), &delivery.data) {
            Ok(m) => m,
            Err(e) => {
                let id = celery::peek_task_id(&headers, correlation.as_deref());
                error!(task_id = ?id, "dropping a message this worker cannot run: {e}");
                ack(&delivery, id.as_deref()).await;
                return;
            }
        };
        let task_id = message.task_id.clone();
        enum Action {
            Drop(&'static str),
            WaitFor(watch::Receiver<bool>),
            Run(CancellationToken, watch::Sender<bool>),
        }
        let action = {
            let mut st = self.state.lock().unwrap();
            if st.revoked.contains(&task_id) {
                Action::Drop("it was revoked")
            } else if st.finished_unacked.contains(&task_id) {
                Action::Drop("it already ran here (its first acknowledgement was lost)")
            } else if let Some(r) = st.running.get(&task_id) {
                Action::WaitFor(r.done.clone())
            } else {
                let cancel = CancellationToken::new();
                let (tx, rx) = watch::channel(false);
                st.running.insert(
                    task_id.clone(),
                    Running {
                        cancel: cancel.clone(),
                        done: rx,
                    },
                );
                Action::Run(cancel, tx)
            }
        };
        match action {
            Action::Drop(why) => {
                warn!(task_id = %task_id, "dropping delivery: {why}");
                ack(&delivery, Some(&task_id)).await;
            }
            Action::WaitFor(mut done) => {
                info!(task_id = %task_id, "redelivered task is already running here; holding it until that run ends");
                while !*done.borrow_and_update() {
                    if done.changed().await.is_err() {
                        break;
                    }
                }
                ack(&delivery, Some(&task_id)).await;
            }
            Action::Run(cancel, done) => {
                let deadline = message.soft_time_limit.map(|d| Instant::now() + d);
                let job = Job {
                    message,
                    cancel,
                    redelivered: delivery.redelivered,
                    deadline,
                };
                info!(task_id = %task_id, submission = job.message.run_args.id,
                      scoring = job.message.run_args.is_scoring, "starting job");
                // Run in its own task so a panicking handler is contained.
                let disposition = match tokio::spawn(handler.handle(job)).await {
                    Ok(d) => d,
                    Err(e) => {
                        error!(task_id = %task_id, "job handler crashed: {e}");
                        Disposition::Ack
                    }
                };
                let acked = match disposition {
                    Disposition::Ack => ack(&delivery, Some(&task_id)).await,
                    Disposition::Requeue => {
                        info!(task_id = %task_id, "giving the task back to the broker");
                        let _ = delivery
                            .nack(lapin::options::BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await;
                        true
                    }
                };
                {
                    let mut st = self.state.lock().unwrap();
                    st.running.remove(&task_id);
                    if !acked {
                        st.finished_unacked.insert(task_id.clone());
                    }
                }
                let _ = done.send(true);
                info!(task_id = %task_id, "job done");
            }
        }
    }
}

async fn ack(delivery: &lapin::message::Delivery, task_id: Option<&str>) -> bool {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => true,
        Ok(false) => {
            warn!(task_id = ?task_id, "could not acknowledge: its channel is gone; the broker will redeliver it and it will be dropped");
            false
        }
        Err(e) => {
            warn!(task_id = ?task_id, "could not acknowledge (channel gone?): {e}; the broker will redeliver it and it will be dropped");
            false
        }
    }
}

/// Declare Celery's topology for `queue` on a channel.
pub async fn declare_topology(ch: &lapin::Channel, queue: &str) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        queue,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        queue_arguments(),
    )
    .await?;
    ch.queue_bind(
        queue,
        queue,
        queue,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// `{"x-max-priority": 10}` as py-amqp encodes it (signed 32-bit).
pub fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(10));
    args
}

/// Parse a pidbox message. `Ok(Some((ids, terminate)))` for a revoke
/// addressed to everyone or to `node_name`; `Ok(None)` for anything else.
pub fn parse_revoke(body: &[u8], node_name: &str) -> Result<Option<(Vec<String>, bool)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("method").and_then(Value::as_str) != Some("revoke") {
        return Ok(None);
    }
    if let Some(dest) = v.get("destination").and_then(Value::as_array) {
        if !dest.is_empty() && !dest.iter().any(|d| d.as_str() == Some(node_name)) {
            return Ok(None);
        }
    }
    let args = v.get("arguments").ok_or("revoke without arguments")?;
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
    Ok(Some((ids, terminate)))
}

/// Open an AMQP connection for `cfg` on the current tokio runtime.
// The closure's error type is lapin's `HandshakeResult`, not ours.
#[allow(clippy::result_large_err)]
pub async fn connect(cfg: &ConsumerConfig) -> Result<Connection, BrokerError> {
    let b = &cfg.broker;
    let uri = AMQPUri {
        scheme: AMQPScheme::AMQP,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: b.username.clone(),
                password: b.password.clone(),
            },
            host: b.host.clone(),
            port: b.port,
        },
        vhost: b.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(cfg.heartbeat),
            connection_timeout: Some(30_000),
            ..Default::default()
        },
    };
    let props = ConnectionProperties::default()
        .with_connection_name(cfg.connection_name.clone().into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let broker = b.to_string();
    let result = match b.tls {
        TlsMode::Off => Connection::connect_uri(uri, props).await,
        mode => {
            let connector =
                super::tls::connector(mode, cfg.tls_ca_file.as_deref()).map_err(|reason| {
                    BrokerError::Tls {
                        broker: broker.clone(),
                        reason,
                    }
                })?;
            let host = b.host.clone();
            let connect = move |uri: &AMQPUri| {
                use lapin::tcp::AMQPUriTcpExt;
                uri.connect()
                    .and_then(|stream| stream.into_rustls(&connector, &host))
            };
            Connection::connector(uri, Box::new(connect), props).await
        }
    };
    result.map_err(
        |source| match super::tls::verification_failure(b.tls, &source) {
            Some(reason) => BrokerError::Tls { broker, reason },
            None => BrokerError::Amqp { broker, source },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_bodies() {
        let celery5 = br#"{"method": "revoke", "arguments": {"task_id": "abc", "terminate": true, "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}"#;
        assert_eq!(
            parse_revoke(celery5, "n@h").unwrap(),
            Some((vec!["abc".to_string()], true))
        );
        let many = br#"{"method": "revoke", "arguments": {"task_id": ["a", "b"]}}"#;
        assert_eq!(
            parse_revoke(many, "n@h").unwrap(),
            Some((vec!["a".to_string(), "b".to_string()], false))
        );
        let other_node =
            br#"{"method": "revoke", "arguments": {"task_id": "a"}, "destination": ["x@y"]}"#;
        assert_eq!(parse_revoke(other_node, "n@h").unwrap(), None);
        let ping = br#"{"method": "ping", "arguments": {}}"#;
        assert_eq!(parse_revoke(ping, "n@h").unwrap(), None);
        assert!(parse_revoke(b"garbage", "n@h").is_err());
    }

    #[test]
    fn bounded_set_forgets_oldest() {
        let mut s = BoundedSet::default();
        for i in 0..REMEMBERED_IDS + 5 {
            s.insert(i.to_string());
        }
        assert!(!s.contains("0"));
        assert!(s.contains(&(REMEMBERED_IDS + 4).to_string()));
    }
}
