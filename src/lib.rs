//! mailfleet: a Redis-coordinated, horizontally scaled email delivery cluster.
//!
//! The library's public surface for app servers is [`Producer`] with [`NewJob`], [`Payload`]
//! and [`Lane`]; everything else is the machinery of the `mailfleet` binary, public so that the
//! integration tests and benchmarks drive the same code paths. See ARCHITECTURE.md for the map.

pub mod api;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod lease;
pub mod metrics;
pub mod mock;
pub mod operate;
pub mod priority;
pub mod producer;
pub mod provider;
pub mod ratelimit;
pub mod render;
pub mod report;
pub mod scheduler;
pub mod scripts;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod unsubscribe;
pub mod worker;

pub use domain::{Email, JobId, Lane, Payload};
pub use producer::{Enqueued, NewJob, Producer, ProducerError};

/// Install ring as the process's rustls crypto provider (reqwest and sqlx share it). Idempotent;
/// the binary calls it first thing, and [`provider::http_client`] calls it for library users.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
