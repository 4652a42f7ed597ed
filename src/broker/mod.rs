//! Broker side of the worker: the Celery v2 codec ([`celery`]), `BROKER_URL`
//! parsing ([`url`]) and the lapin consumer.
pub mod celery;
pub mod url;
