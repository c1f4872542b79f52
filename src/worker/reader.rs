//! One partition's read loop: wait for in-flight room, read a batch (tx before bulk), hand it
//! to a batch task. Redis errors back off and retry; nothing here ever acks.

use super::{Item, Shared, process};
use crate::metrics::METRICS;
use crate::stream::consumer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) async fn run(
    shared: Arc<Shared>,
    partition: u16,
    out: UnboundedSender<Item>,
    batches: TaskTracker,
    token: CancellationToken,
) {
    let s = &shared.settings;
    let mut blocking = None;
    let mut failures: u32 = 0;
    loop {
        // Room first: never read what we could not hold.
        let permit = tokio::select! {
            _ = token.cancelled() => return,
            p = shared.in_flight.clone().acquire_many_owned(s.batch_size as u32) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        permit.forget();
        METRICS.in_flight.add(s.batch_size as i64);
        if token.is_cancelled() {
            shared.release(s.batch_size);
            return;
        }
        let read = read_once(&shared, partition, &mut blocking).await;
        let entries = match read {
            Ok(e) => {
                failures = 0;
                e
            }
            Err(e) => {
                shared.release(s.batch_size);
                METRICS.redis_errors.with_label_values(&["read"]).inc();
                blocking = None;
                failures = failures.saturating_add(1);
                // Redis came back without its data (no persistence, a new disk): the groups
                // are gone with the streams. Create them again, from the start of the new streams.
                if e.contains("NOGROUP") {
                    recreate_groups(&shared).await;
                }
                let wait = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
                tracing::warn!(partition, error.message = %e, retry_in_ms = wait.as_millis() as u64, "read failed; backing off");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        debug_assert!(
            entries.len() <= s.batch_size,
            "read more entries than permits taken"
        );
        shared.release(s.batch_size.saturating_sub(entries.len()));
        if entries.is_empty() {
            continue;
        }
        let shared = shared.clone();
        let out = out.clone();
        batches.spawn(async move { process::batch(shared, entries, out).await });
    }
}

async fn read_once(
    shared: &Shared,
    partition: u16,
    blocking: &mut Option<redis::aio::MultiplexedConnection>,
) -> Result<Vec<crate::stream::RawEntry>, String> {
    let s = &shared.settings;
    let d = &shared.deps;
    let now = {
        let mut conn = d.redis.get().await.map_err(|e| e.to_string())?;
        consumer::read_now(
            &mut *conn,
            &d.keys,
            partition,
            &s.consumer,
            s.batch_size,
            &shared.paused_lanes(),
        )
        .await
        .map_err(|e| e.to_string())?
    };
    if !now.is_empty() {
        return Ok(now);
    }
    if blocking.is_none() {
        *blocking = Some(
            crate::stream::blocking_connection(&d.redis_url, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let conn = blocking.as_mut().ok_or("no blocking connection")?;
    // Bounded by BLOCK; a dead server is caught by the outer timeout.
    let block = Duration::from_millis(s.block_ms);
    let paused = shared.paused_lanes();
    match tokio::time::timeout(
        block + Duration::from_secs(5),
        // COUNT applies per stream: half each keeps the total within the batch's permits.
        consumer::read_blocking(
            conn,
            &d.keys,
            partition,
            &s.consumer,
            (s.batch_size / 2).max(1),
            s.block_ms,
            &paused,
        ),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("blocking read did not return in time".into()),
    }
}

async fn recreate_groups(shared: &Shared) {
    let d = &shared.deps;
    let result = match d.redis.get().await {
        Ok(mut conn) => consumer::ensure_groups(&mut *conn, &d.keys)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::warn!("consumer groups were missing (Redis lost its data); created them again")
        }
        Err(e) => tracing::warn!(error.message = %e, "re-creating consumer groups failed"),
    }
}
