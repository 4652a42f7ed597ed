//! Broker side of the worker: the Celery v2 codec ([`celery`]),
//! `BROKER_URL` parsing ([`url`]) and the RabbitMQ consumer ([`consumer`]:
//! topology, slots, late acks, revoke, reconnection).
pub mod celery;
pub mod consumer;
pub mod url;

pub use consumer::{
    BrokerError, Consumer, ConsumerConfig, Disposition, Job, JobHandler, Revocation, DEFAULT_QUEUE,
};
pub use url::{BrokerUrl, BrokerUrlError, TlsMode};
