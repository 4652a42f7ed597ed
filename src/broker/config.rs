//! What a consumer is configured with, and the errors at the broker edge
//! (shared by the consumer and its connection).

use std::path::PathBuf;
use std::time::Duration;

pub use super::exit_policy::ExitPolicy;
use super::url::BrokerUrl;
use crate::hostname::hostname;

/// Codabench's queue (and exchange, and routing key) name.
pub const DEFAULT_QUEUE: &str = "compute-worker";

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
    /// When to stop taking jobs on its own (autoscaling exits).
    pub exit: ExitPolicy,
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
            exit: ExitPolicy::default(),
        }
    }
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
