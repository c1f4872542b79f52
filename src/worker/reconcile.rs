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
use crate::domain::{JobId, Lane, Status};
use crate::metrics::METRICS;
use crate::store::emails;
use crate::stream::Source;
use crate::stream::backlog::{self, Backlog};
use crate::stream::consumer::{self, Requeue};
use std::collections::HashMap;
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

/// One pass: re-enqueue every overdue job whose entry no stream may still hold,
/// [`PASS_LIMIT`] per statement. Returns how many were re-enqueued.
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
        let mut conn = shared.deps.redis.get().await.map_err(|e| e.to_string())?;
        let rows = lost_only(&mut conn, &shared.deps.keys, rows)
            .await
            .map_err(|e| {
                METRICS.redis_errors.with_label_values(&["reconcile"]).inc();
                e.to_string()
            })?;
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
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
                tenant: r.tenant,
            })
            .collect();
        // If this fails the rows stay stamped and come back after another threshold.
        consumer::requeue(&mut *conn, &shared.deps.keys, &jobs)
            .await
            .map_err(|e| {
                METRICS.redis_errors.with_label_values(&["reconcile"]).inc();
                e.to_string()
            })?;
        if let Err(e) = emails::note_reenqueued(&shared.deps.pg, &ids).await {
            // Only the count on the rows is missing: the jobs are back on their streams.
            METRICS.store_errors.with_label_values(&["reconcile"]).inc();
            tracing::warn!(error.message = %e, "could not count re-enqueues");
        }
        METRICS.reenqueued.inc_by(jobs.len() as u64);
        total += jobs.len() as u64;
        if (n as i64) < PASS_LIMIT {
            return Ok(total);
        }
    }
}

/// The overdue rows whose entry cannot be waiting in a stream. A `queued` or `retrying` job
/// whose stream still has undelivered entries from around a time an entry of it was added (its
/// `due_at`, else its `enqueued_at`, and its last re-enqueue) may only be waiting behind a
/// backlog: it is left for a later pass (its row is stamped). A `sending` job was delivered
/// already: its entry's fate is not in the backlog.
async fn lost_only(
    conn: &mut crate::stream::conn::Connection,
    keys: &crate::stream::Keys,
    rows: Vec<emails::Overdue>,
) -> redis::RedisResult<Vec<emails::Overdue>> {
    let streams_of = |r: &emails::Overdue| -> Vec<String> {
        if r.status == Status::Sending.as_str() {
            return Vec::new();
        }
        let partition = (r.partition.max(0) as u16) % keys.partitions();
        let lane = r.lane.parse().unwrap_or(Lane::Bulk);
        let mut out = vec![keys.lane(partition, lane)];
        if let (Lane::Bulk, Some(t)) = (lane, r.tenant.as_deref()) {
            out.push(keys.source(&Source {
                partition,
                lane,
                tenant: Some(Arc::from(t)),
            }));
        }
        out
    };
    let mut streams: Vec<String> = rows.iter().flat_map(streams_of).collect();
    streams.sort_unstable();
    streams.dedup();
    if streams.is_empty() {
        return Ok(rows);
    }
    let seen = backlog::read(&mut **conn, &streams, crate::stream::GROUP).await?;
    let by_stream: HashMap<&str, Backlog> = streams.iter().map(String::as_str).zip(seen).collect();
    let (lost, waiting): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| {
        !streams_of(r).iter().any(|s| {
            by_stream
                .get(s.as_str())
                .is_some_and(|b| r.entry_times_ms().any(|at| b.may_hold(at)))
        })
    });
    if !waiting.is_empty() {
        tracing::info!(
            count = waiting.len(),
            "reconciler left overdue jobs that may be waiting behind a backlog"
        );
    }
    Ok(lost)
}
