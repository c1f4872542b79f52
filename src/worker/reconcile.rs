//! The reconciler: Postgres, not Redis, is the system of record, so a job whose row stays
//! non-final long past when it was due has lost its entry (Redis restarted without its data,
//! a stream was trimmed or deleted, a retry's delayed member vanished). Every worker runs a pass
//! now and then; row locks with SKIP LOCKED split the work, and each re-enqueued row is stamped
//! so it is left alone for another threshold. A re-enqueued job keeps its id, so if its old entry
//! was only slow rather than lost, the claim in Postgres still lets exactly one of them send.
//!
//! The same periodic pass applies provider webhook events that arrived before their job was
//! recorded `sent` (`store::webhooks::apply_pending`), so no delivery or bounce is dropped
//! for having been fast.

use super::Shared;
use crate::domain::{JobId, Lane};
use crate::metrics::METRICS;
use crate::store::emails;
use crate::stream::consumer::{self, Requeue};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows taken per statement.
const PASS_LIMIT: i64 = 500;

pub(super) async fn run(shared: Arc<Shared>, token: CancellationToken) {
    let s = &shared.settings;
    let every = Duration::from_millis(s.reconcile_interval_ms.max(10));
    loop {
        // Jitter spreads the passes of many workers over the interval.
        let wait =
            every + Duration::from_millis(rand::random_range(0..=every.as_millis() as u64 / 4));
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match crate::store::webhooks::apply_pending(&shared.deps.pg).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                count = n,
                "applied webhook events that arrived before their job was recorded"
            ),
            Err(e) => {
                METRICS.store_errors.with_label_values(&["webhooks"]).inc();
                tracing::warn!(error.message = %e, "applying pending webhook events failed");
            }
        }
        if s.reconcile_after.is_zero() {
            continue;
        }
        match pass(&shared).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "reconciler re-enqueued overdue jobs"),
            Err(e) => tracing::warn!(error.message = %e, "reconciler pass failed"),
        }
    }
}

/// One pass: re-enqueue every overdue job, [`PASS_LIMIT`] per statement. Returns how many.
pub async fn pass(shared: &Shared) -> Result<u64, String> {
    let s = &shared.settings;
    let mut total = 0;
    loop {
        let rows = emails::take_overdue(
            &shared.deps.pg,
            s.reconcile_after,
            s.visibility_timeout_ms as i64,
            PASS_LIMIT,
        )
        .await
        .map_err(|e| {
            METRICS.store_errors.with_label_values(&["reconcile"]).inc();
            e.to_string()
        })?;
        let n = rows.len();
        let jobs: Vec<Requeue> = rows
            .into_iter()
            .map(|r| Requeue {
                partition: (r.partition.max(0) as u16) % shared.deps.keys.partitions(),
                lane: r.lane.parse().unwrap_or(Lane::Bulk),
                id: JobId::from(r.id),
                idem: r.idempotency_key,
                enqueued_at_ms: r.enqueued_at.timestamp_millis(),
                payload: r.payload,
                replays: r.replays.max(0) as u32,
            })
            .collect();
        let mut conn = shared.deps.redis.get().await.map_err(|e| e.to_string())?;
        // If this fails the rows stay stamped and come back after another threshold.
        consumer::requeue(&mut *conn, &shared.deps.keys, &jobs)
            .await
            .map_err(|e| {
                METRICS.redis_errors.with_label_values(&["reconcile"]).inc();
                e.to_string()
            })?;
        METRICS.reenqueued.inc_by(n as u64);
        total += n as u64;
        if (n as i64) < PASS_LIMIT {
            return Ok(total);
        }
    }
}
