//! HTTP: the ingest API (`mailfleet api`) and the operations endpoints every process serves.
//!
//! Architecture Invariant: handlers parse, authorize and call into `producer`/`store`; they hold
//! no business logic of their own.

pub mod admin;
mod emails;
pub mod ingest;
pub mod serve;
pub mod unsubscribe;
pub mod v1;
pub mod webhooks;

use crate::metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Health {
    pub redis: crate::stream::Pool,
    pub pg: PgPool,
    pub draining: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz`, `/livez` (alive, no dependency checks) and `/readyz` (Redis and
/// Postgres answer within a second, and the process is not draining).
pub fn ops_router(health: Health) -> Router {
    health_router(health).merge(metrics_router())
}

/// `/metrics` alone: the API serves it on its own listener, not on its public port.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(|| async { metrics::render() }))
}

/// `/healthz`, `/livez` and `/readyz`, without `/metrics`.
pub fn health_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(h): State<Health>) -> (StatusCode, String) {
    if h.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".into());
    }
    let redis = crate::stream::ping(&h.redis);
    let pg = crate::store::ping(&h.pg);
    let t = Duration::from_secs(1);
    let (r, p) = tokio::join!(tokio::time::timeout(t, redis), tokio::time::timeout(t, pg));
    let mut problems = Vec::new();
    if !matches!(r, Ok(Ok(_))) {
        problems.push("redis unreachable");
    }
    if !matches!(p, Ok(Ok(_))) {
        problems.push("postgres unreachable");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join(", "))
    }
}

/// Serve `router` on `listener` until `shutdown` is cancelled, bounded in connections and
/// time ([`serve::Bounds`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    bounds: serve::Bounds,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve::serve(listener, router, bounds, shutdown).await
}
