//! Integration tests against real Redis and Postgres: one binary (one link step), one module
//! per area. Each test gets a fresh database (`#[sqlx::test]`) and its own Redis key prefix.

mod support;

mod admin;
mod api;
mod batch;
mod cli;
mod cluster;
mod deploy;
mod dlq;
mod durability;
mod fairness;
mod guarantees;
mod leader;
mod observability;
mod operate;
mod pause;
mod pipeline;
mod priority;
mod providers;
mod ratelimit;
mod readme;
mod recovery;
mod reliability;
mod resilience;
mod retention;
mod schedule_scale;
mod scheduler;
mod scripts;
mod suppressions;
mod unsubscribe;
mod webhooks;
