//! Shared helpers for integration tests: a real-RabbitMQ toolkit
//! ([`amqp`]) and a fake Codabench site ([`site`]).
//!
//! Every test binary compiles this whole module but uses only part of it.
#![allow(dead_code)]

pub mod amqp;
pub mod site;
