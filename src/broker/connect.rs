//! Opening the AMQP connection (plain or TLS) and declaring Celery's task
//! topology.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::config::{BrokerError, ConsumerConfig};
use super::url::TlsMode;

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
