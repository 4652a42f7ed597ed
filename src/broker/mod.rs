//! Broker side of the worker: the Celery v2 codec ([`celery`]),
//! `BROKER_URL` parsing ([`url`]) and the RabbitMQ consumer ([`consumer`]:
//! topology, slots, late acks, revoke, reconnection) and its TLS ([`tls`]).
pub mod celery;
pub mod consumer;
pub mod tls;
pub mod url;

pub use consumer::{
    BrokerError, Consumer, ConsumerConfig, Disposition, Job, JobHandler, Revocation, DEFAULT_QUEUE,
};
pub use url::{BrokerUrl, BrokerUrlError, TlsMode};
