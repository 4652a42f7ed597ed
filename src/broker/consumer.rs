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
//! * Remote control ([`super::pidbox`]): the queue `<node>.celery.pidbox`
//!   on the same connection as the job slots (Codabench's worker panel
//!   lists the worker by it and sees it busy when a slot's channel holds
//!   an unacknowledged job) answers `celery inspect` and receives `{"method": "revoke", "arguments":
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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::celery::{self, TaskMessage};
use super::connect::{connect, declare_topology};
use super::events;
use super::exit_policy::{Admit, Closing};
use super::pidbox::{self, ActiveTask, Clock};

pub use super::config::{BrokerError, ConsumerConfig, ExitPolicy, DEFAULT_QUEUE};
pub use super::pidbox::PIDBOX_EXCHANGE;

/// How many revoked / finished task ids are remembered.
const REMEMBERED_IDS: usize = 10_000;

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
    /// When the worker received the task's message.
    pub received: Instant,
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

/// A bounded set that forgets its oldest entries.
#[derive(Debug, Default)]
pub(super) struct BoundedSet {
    set: HashSet<String>,
    pub(super) order: VecDeque<String>,
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

pub(super) struct Running {
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
    pub(super) task: ActiveTask,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) running: HashMap<String, Running>,
    pub(super) revoked: BoundedSet,
    finished_unacked: BoundedSet,
    /// Jobs finished since start (Celery's `total` / `processed`).
    pub(super) processed: u64,
}

/// The consumer. Create it, subscribe to [`Consumer::revocations`] if
/// needed, then drive [`Consumer::run`].
#[derive(Clone)]
pub struct Consumer {
    pub(super) cfg: Arc<ConsumerConfig>,
    pub(super) state: Arc<Mutex<State>>,
    revocations: broadcast::Sender<Revocation>,
    conn: watch::Sender<Option<(u64, Arc<Connection>)>>,
    pub(super) clock: Arc<Clock>,
    pub(super) started: Instant,
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
            clock: Arc::default(),
            started: Instant::now(),
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

    /// Consume until `shutdown` is cancelled, or until the configured
    /// [`ExitPolicy`](super::exit_policy::ExitPolicy) closes the consumer.
    /// Then no new job is taken (a task received but not started goes back
    /// to the broker); running jobs are awaited (and acknowledged) before
    /// returning. Connection failures are retried forever with backoff.
    /// Returns why the policy closed the consumer, if it did.
    pub async fn run<H: JobHandler>(
        &self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Option<String> {
        let closing = Arc::new(Closing::new(self.cfg.exit, &shutdown));
        let idle = {
            let closing = closing.clone();
            tokio::spawn(async move { closing.watch_idle().await })
        };
        let mut slots = Vec::new();
        for i in 0..self.cfg.slots.max(1) {
            let this = self.clone();
            let handler = handler.clone();
            let closing = closing.clone();
            slots.push(tokio::spawn(async move {
                this.slot(i, handler, &closing).await
            }));
        }
        // The connection (and the pidbox queue the worker panel lists)
        // stays up until the running jobs are done and acknowledged.
        let stop = CancellationToken::new();
        let manager = {
            let (this, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { this.manage_connection(stop).await })
        };
        for s in slots {
            if let Err(e) = s.await {
                error!("job slot task failed: {e}");
            }
        }
        stop.cancel();
        idle.abort();
        if let Err(e) = manager.await {
            error!("broker connection task failed: {e}");
        }
        closing.reason()
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
                        self.send_event(&conn, None, "worker-offline").await;
                        let _ = conn.close(200, "worker shutting down").await;
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
    /// pidbox messages and sending heartbeats meanwhile.
    async fn watch_session(
        &self,
        conn: &Connection,
        mut pidbox: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut events = conn.events_listener();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut heartbeat = tokio::time::interval(events::HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut event_channel = None;
        self.send_event(conn, Some(&mut event_channel), "worker-online")
            .await;
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
                    Some(Ok(d)) => self.on_pidbox(conn, &d.properties, &d.data).await,
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
                _ = heartbeat.tick() => {
                    self.send_event(conn, Some(&mut event_channel), "worker-heartbeat").await;
                }
            }
        }
    }

    pub(super) fn amqp_err(&self, source: lapin::Error) -> BrokerError {
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
        let pidbox = self.open_mailbox(&ch).await?;
        Ok((conn, ch, pidbox))
    }

    pub(super) fn revoke(&self, task_id: String, terminate: bool) {
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
    /// connection; runs one job at a time. When the consumer closes, the
    /// channel is closed, so that a task the broker already sent it goes
    /// back to the queue.
    async fn slot<H: JobHandler>(&self, index: usize, handler: Arc<H>, closing: &Closing) {
        let shutdown = closing.taking();
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
            let (channel, mut consumer) = match self.open_slot(&conn, &tag).await {
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
                    // A closed consumer takes nothing more, even a
                    // delivery that is already here.
                    biased;
                    _ = shutdown.cancelled() => {
                        let _ = channel.close(200, "not taking jobs").await;
                        break 'outer;
                    }
                    _ = conn_rx.changed() => {
                        if matches!(&*conn_rx.borrow(), Some((g, _)) if *g == generation) {
                            continue;
                        }
                        continue 'outer;
                    }
                    d = consumer.next() => d,
                };
                match next {
                    Some(Ok(delivery)) => self.process(delivery, handler.as_ref(), closing).await,
                    Some(Err(e)) => {
                        warn!(slot = index, "consumer failed: {e}");
                        self.wait_new_generation(&mut conn_rx, generation, shutdown)
                            .await;
                        continue 'outer;
                    }
                    None => {
                        self.wait_new_generation(&mut conn_rx, generation, shutdown)
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
    async fn process(
        &self,
        delivery: lapin::message::Delivery,
        handler: &dyn JobHandler,
        closing: &Closing,
    ) {
        let received = Instant::now();
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
            GiveBack,
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
            } else if closing.admit() == Admit::GiveBack {
                Action::GiveBack
            } else {
                let cancel = CancellationToken::new();
                let (tx, rx) = watch::channel(false);
                let task = active_task(&message, &delivery);
                st.running.insert(
                    task_id.clone(),
                    Running {
                        cancel: cancel.clone(),
                        done: rx,
                        task,
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
            Action::GiveBack => {
                info!(task_id = %task_id, "not taking jobs any more: giving the task back to the broker");
                requeue(&delivery).await;
            }
            Action::Run(cancel, done) => {
                let deadline = message.soft_time_limit.map(|d| received + d);
                let job = Job {
                    message,
                    cancel,
                    redelivered: delivery.redelivered,
                    deadline,
                    received,
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
                        requeue(&delivery).await;
                        true
                    }
                };
                closing.finished();
                {
                    let mut st = self.state.lock().unwrap();
                    st.running.remove(&task_id);
                    st.processed += 1;
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

/// How `inspect active` shows a job: its arguments without the secret.
fn active_task(message: &TaskMessage, delivery: &lapin::message::Delivery) -> ActiveTask {
    let mut run_args = serde_json::to_value(&message.run_args).unwrap_or(Value::Null);
    if let Some(secret) = run_args.get_mut("secret") {
        *secret = Value::String("<redacted>".into());
    }
    ActiveTask {
        id: message.task_id.clone(),
        args: Value::Array(vec![run_args]),
        time_start: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        routing_key: delivery.routing_key.to_string(),
        priority: delivery.properties.priority().unwrap_or(0),
        redelivered: delivery.redelivered,
    }
}

async fn requeue(delivery: &lapin::message::Delivery) {
    let _ = delivery
        .nack(lapin::options::BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await;
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

/// Parse a pidbox message. `Ok(Some((ids, terminate)))` for a revoke
/// addressed to everyone or to `node_name`; `Ok(None)` for anything else.
pub fn parse_revoke(body: &[u8], node_name: &str) -> Result<Option<(Vec<String>, bool)>, String> {
    match pidbox::parse(body, node_name)? {
        Some(r) if r.method == "revoke" => pidbox::revoke_arguments(&r.arguments).map(Some),
        _ => Ok(None),
    }
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
