//! Broker side of the worker: the Celery v2 codec ([`celery`]),
//! `BROKER_URL` parsing ([`url`]) and the RabbitMQ consumer ([`consumer`]:
//! topology, slots, late acks, revoke, reconnection; [`connect`] opens its
//! connection) and its TLS ([`tls`]). Celery monitoring: remote control
//! ([`pidbox`]: `ping`, `inspect`) and worker events ([`events`]).
pub mod celery;
pub mod config;
pub mod connect;
pub mod consumer;
pub mod events;
pub mod exit_policy;
pub mod pidbox;
mod remote;
pub mod task_step;
pub mod tls;
pub mod url;

pub use consumer::{
    BrokerError, Consumer, ConsumerConfig, Disposition, ExitPolicy, Job, JobHandler, Revocation,
    DEFAULT_QUEUE,
};
pub use url::{BrokerUrl, BrokerUrlError, TlsMode};
