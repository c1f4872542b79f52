//! Recovery of crashed consumers' work: periodically claim entries pending longer than the
//! visibility timeout and run them through the normal batch pipeline. The claim in Postgres
//! then decides: a job already final is acked, a job whose claim expired is sent again (the
//! crashed worker may have sent it: that is the one legitimate duplicate, counted by the
//! `attempts` column), a job still sending under a live claim is left pending.

use super::recorder::Outbox;
use super::{Shared, process};
use crate::domain::Lane;
use crate::metrics::METRICS;
use crate::store::emails;
use crate::stream::consumer::dead_reason;
use crate::stream::{Source, consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) async fn run(
    shared: Arc<Shared>,
    out: Outbox,
    batches: TaskTracker,
    token: CancellationToken,
) {
    let every = Duration::from_millis(shared.settings.reclaim_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for p in 0..shared.deps.keys.partitions() {
            for lane in Lane::ALL {
                let all = shared.settings.batch_size;
                if !sweep(
                    &shared,
                    &Source::shared(p, lane),
                    all,
                    &out,
                    &batches,
                    &token,
                )
                .await
                {
                    return;
                }
            }
            if !sweep_tenants(&shared, p, &out, &batches, &token).await {
                return;
            }
        }
    }
}

/// Tenants' bulk streams due for a look (lua/reclaim_due.lua) asked for per call: reclaim's
/// cost follows the streams with deliveries outstanding, never the tenants known.
const DUE_PER_CALL: usize = 256;

/// The tenant streams of partition `p` that may hold a crashed consumer's entries, swept one
/// by one. Returns false when shutting down.
async fn sweep_tenants(
    shared: &Arc<Shared>,
    p: u16,
    out: &Outbox,
    batches: &TaskTracker,
    token: &CancellationToken,
) -> bool {
    let s = &shared.settings;
    loop {
        let due = match shared.deps.redis.get().await {
            Ok(mut conn) => consumer::reclaim_due(
                &mut *conn,
                &shared.deps.keys,
                p,
                s.visibility_timeout_ms,
                s.reclaim_interval_ms,
                DUE_PER_CALL,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["reclaim"]).inc();
                tracing::warn!(partition = p, error.message = %e, "looking for tenant streams to reclaim failed");
                return true;
            }
        };
        for (source, pending) in &due {
            // Room for what is pending there, not a whole batch: a worker whose pool is full
            // frees room a little at a time, and a tenant stream holds a few entries.
            let want = (*pending as usize).clamp(1, s.batch_size);
            if !sweep(shared, source, want, out, batches, token).await {
                return false;
            }
        }
        if due.len() < DUE_PER_CALL {
            return true;
        }
    }
}

/// The ledger follows the dead-letter stream: jobs dead-lettered at max deliveries become
/// `dead`, or the reconciler would re-enqueue them with a fresh delivery count and a job that
/// crashes its worker would circle forever. Retried while Postgres is down (until shutdown);
/// should that fail, the claim's attempt cap (`store::emails::claim`) ends the circle instead.
async fn mark_dead(shared: &Shared, ids: &[uuid::Uuid], token: &CancellationToken) {
    let error = format!(
        "dead-lettered after more than {} deliveries without an outcome",
        shared.settings.max_deliveries
    );
    let mut wait = Duration::from_millis(100);
    loop {
        match emails::mark_dead(
            &shared.deps.pg,
            ids,
            &error,
            shared.settings.visibility_timeout_ms as i64,
        )
        .await
        {
            Ok(_) => return,
            Err(e) => {
                METRICS.store_errors.with_label_values(&["mark_dead"]).inc();
                tracing::warn!(error.message = %e, count = ids.len(), "marking dead-lettered jobs dead failed; retrying");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// One pass over a stream's pending entries, `want` at a time. Returns false when shutting down.
async fn sweep(
    shared: &Arc<Shared>,
    source: &Source,
    want: usize,
    out: &Outbox,
    batches: &TaskTracker,
    token: &CancellationToken,
) -> bool {
    let s = &shared.settings;
    let (p, lane) = (source.partition, source.lane);
    let mut cursor = "0-0".to_owned();
    loop {
        tokio::select! {
            _ = token.cancelled() => return false,
            room = shared.room(lane).take(want) => if room.is_none() { return false },
        }
        let r = match shared.deps.redis.get().await {
            Ok(mut conn) => consumer::reclaim(
                &mut *conn,
                &shared.deps.keys,
                source,
                &s.consumer,
                s.visibility_timeout_ms,
                &cursor,
                want,
                s.max_deliveries,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                shared.room(lane).unclaimed(want);
                METRICS.redis_errors.with_label_values(&["reclaim"]).inc();
                tracing::warn!(partition = p, lane = %lane, error.message = %e, "reclaim failed");
                return true;
            }
        };
        shared
            .room(lane)
            .unclaimed(want.saturating_sub(r.entries.len()));
        if r.dead_lettered > 0 {
            METRICS
                .dead_letters
                .with_label_values(&[dead_reason::MAX_DELIVERIES])
                .inc_by(r.dead_lettered);
            tracing::warn!(partition = p, lane = %lane, count = r.dead_lettered, "dead-lettered entries over max deliveries");
            mark_dead(shared, &r.dead_jobs, token).await;
        }
        if !r.entries.is_empty() {
            METRICS.reclaimed.inc_by(r.entries.len() as u64);
            tracing::info!(partition = p, lane = %lane, count = r.entries.len(), "reclaimed entries idle past the visibility timeout");
            let (shared, out) = (shared.clone(), out.clone());
            batches.spawn(async move { process::batch(shared, r.entries, out).await });
        }
        if r.next_cursor == "0-0" {
            if source.tenant.is_some() {
                // Entries dead-lettered here were acked inside reclaim.lua: settle the stream
                // as the recorder would (delete it if empty, back in the ring if entries wait).
                let settled = match shared.deps.redis.get().await {
                    Ok(mut conn) => consumer::settle(&mut *conn, &shared.deps.keys, source)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = settled {
                    METRICS.redis_errors.with_label_values(&["reclaim"]).inc();
                    tracing::warn!(partition = p, error.message = %e, "settling a tenant stream after reclaim failed");
                }
            }
            return true;
        }
        cursor = r.next_cursor;
    }
}
