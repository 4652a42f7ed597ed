//! The consumer's side of Celery monitoring: answering remote-control
//! requests ([`super::pidbox`]) and sending worker events
//! ([`super::events`]).

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::Value;
use tracing::{debug, warn};

use super::celery;
use super::consumer::{BrokerError, Consumer};
use super::events::{self, WorkerEvent};
use super::pidbox::{self, WorkerView};
use super::url::TlsMode;

impl Consumer {
    /// Declare and consume this node's mailbox, named as Celery names it
    /// (Codabench's panel lists the worker by it). Another live worker
    /// with this node name would share the queue and take half of the
    /// revokes: then consume a private queue instead and say so.
    pub(super) async fn open_mailbox(&self, ch: &Channel) -> Result<lapin::Consumer, BrokerError> {
        let node = &self.cfg.node_name;
        let shared = pidbox::queue_name(node);
        let amqp = |e| self.amqp_err(e);
        if pidbox::declare(ch, &shared, false).await.map_err(amqp)? == 0 {
            let consumer = self.consume_mailbox(ch, &shared).await?;
            // Two workers that declared at once both saw no consumer.
            let now = ch
                .queue_declare(
                    &shared,
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(amqp)?;
            if now.consumer_count() <= 1 {
                return Ok(consumer);
            }
            ch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
                .await
                .map_err(amqp)?;
        }
        let own = format!(
            "{node}.{}.celery.pidbox",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        warn!(%node, queue = %own,
              "another worker already uses the node name {node}: revokes and `celery inspect` still reach \
               this worker through {own}, but Codabench's worker panel will not list it; give each worker \
               its own host name");
        pidbox::declare(ch, &own, true).await.map_err(amqp)?;
        self.consume_mailbox(ch, &own).await
    }

    async fn consume_mailbox(
        &self,
        ch: &Channel,
        queue: &str,
    ) -> Result<lapin::Consumer, BrokerError> {
        ch.basic_consume(
            queue,
            &format!("{}-pidbox", self.cfg.node_name),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.amqp_err(e))
    }

    /// Send a worker event, on `channel` (opened and kept there when
    /// missing or closed) or on a channel of its own. A failure is logged:
    /// monitoring never stops the worker.
    pub(super) async fn send_event(
        &self,
        conn: &Connection,
        channel: Option<&mut Option<lapin::Channel>>,
        kind: &str,
    ) {
        let mut own = None;
        let slot = channel.unwrap_or(&mut own);
        if !slot.as_ref().is_some_and(|c| c.status().connected()) {
            *slot = match conn.create_channel().await {
                Ok(ch) => match events::declare(&ch).await {
                    Ok(()) => Some(ch),
                    Err(e) => {
                        warn!("cannot declare the Celery event exchange: {e}");
                        None
                    }
                },
                Err(e) => {
                    warn!("cannot open a channel for Celery events: {e}");
                    None
                }
            };
        }
        let Some(ch) = slot.as_ref() else { return };
        let (active, processed) = {
            let st = self.state.lock().unwrap();
            (st.running.len(), st.processed)
        };
        let event = WorkerEvent {
            kind,
            node: &self.cfg.node_name,
            clock: self.clock.forward(),
            active,
            processed,
        };
        if let Err(e) = events::send(ch, &event).await {
            warn!("cannot send the Celery event {kind}: {e}");
        }
    }

    /// What `celery inspect` answers are made of, now.
    fn view(&self) -> WorkerView {
        let st = self.state.lock().unwrap();
        let b = &self.cfg.broker;
        WorkerView {
            node: self.cfg.node_name.clone(),
            pid: std::process::id(),
            clock: self.clock.value(),
            uptime_secs: self.started.elapsed().as_secs(),
            slots: self.cfg.slots,
            queue: self.cfg.queue.clone(),
            active: st.running.values().map(|r| r.task.clone()).collect(),
            processed: st.processed,
            revoked: st.revoked.order.iter().rev().take(1000).cloned().collect(),
            broker: serde_json::json!({
                "hostname": b.host, "userid": b.username, "virtual_host": b.vhost,
                "port": b.port, "insist": false, "ssl": b.tls != TlsMode::Off,
                "transport": "amqp", "connect_timeout": 30, "transport_options": {},
                "login_method": "PLAIN", "uri_prefix": null,
                "heartbeat": f64::from(self.cfg.heartbeat),
                "failover_strategy": "round-robin", "alternates": [],
            }),
        }
    }

    pub(super) async fn on_pidbox(
        &self,
        conn: &Connection,
        props: &lapin::BasicProperties,
        body: &[u8],
    ) {
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
        if let Some(c) = headers.get("clock").and_then(Value::as_u64) {
            self.clock.adjust(c);
        }
        let req = match pidbox::parse(body, &self.cfg.node_name) {
            Ok(Some(r)) => r,
            Ok(None) => return debug!("ignoring a remote-control message for other nodes"),
            Err(e) => return warn!("ignoring malformed remote-control message: {e}"),
        };
        debug!(method = %req.method, "remote-control request");
        if req.method == "revoke" {
            match pidbox::revoke_arguments(&req.arguments) {
                Ok((ids, terminate)) => {
                    for id in ids {
                        self.revoke(id, terminate);
                    }
                }
                Err(e) => warn!("ignoring malformed revoke: {e}"),
            }
        }
        if req.method == "heartbeat" {
            // `celery events` asks every worker for one at start.
            self.send_event(conn, None, "worker-heartbeat").await;
        }
        let Some((exchange, key)) = &req.reply_to else {
            return;
        };
        let answer = pidbox::answer(&req, &self.view());
        // A channel per reply: a bad reply exchange closes only it.
        let sent = match conn.create_channel().await {
            Ok(ch) => {
                let r = pidbox::reply(
                    &ch,
                    (exchange, key),
                    req.ticket.as_deref(),
                    self.clock.forward(),
                    &self.cfg.node_name,
                    answer,
                )
                .await;
                let _ = ch.close(200, "reply sent").await;
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            warn!(method = %req.method, %exchange, "cannot answer a remote-control request: {e}");
        }
    }
}
