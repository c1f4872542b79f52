//! An operator's actions on jobs that touch both stores. `retry`: failed (or unknown) jobs
//! go back to `queued` in Postgres first, then onto their lane streams as fresh entries with
//! the same id and payload, so a crash between the two leaves a `queued` row the reconciler
//! re-enqueues: nothing revived is lost. A template changed within the workers' cache time
//! (`worker::TEMPLATE_TTL`) is waited for first, so a fix made a moment ago is the one used. Listing and cancelling are Postgres only
//! (`store::emails::operate`).

use crate::domain::{JobId, Lane};
use crate::store::StoreError;
use crate::store::emails::operate::{self, Revived};
use crate::stream::Keys;
use crate::stream::consumer::{self, Requeue};
use redis::aio::ConnectionLike;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "Redis failed while putting {count} revived job(s) on their streams ({message}); they are \
         queued in Postgres and the reconciler enqueues them"
    )]
    Redis { count: usize, message: String },
}

/// Put the retryable jobs among `ids` back in the queue; returns the ids revived.
pub async fn retry<C: ConnectionLike + Send>(
    pg: &PgPool,
    conn: &mut C,
    keys: &Keys,
    ids: &[Uuid],
    tenant: Option<&str>,
) -> Result<Vec<Uuid>, OperateError> {
    let revived = operate::revive(pg, ids, tenant).await?;
    // A template fixed a moment ago may still be cached as missing (or as its old version) by
    // the workers: let them see it before the jobs reach them.
    let mut names: Vec<String> = revived.iter().filter_map(|r| r.template.clone()).collect();
    names.sort();
    names.dedup();
    if let Some(ago) = crate::store::templates::changed_ago(pg, &names).await? {
        let settle = crate::worker::TEMPLATE_TTL + std::time::Duration::from_millis(500);
        if let Some(wait) = settle.checked_sub(ago) {
            tokio::time::sleep(wait).await;
        }
    }
    let jobs: Vec<Requeue> = revived.iter().map(|r| requeue_of(r, keys)).collect();
    consumer::requeue(conn, keys, &jobs)
        .await
        .map_err(|e| OperateError::Redis {
            count: jobs.len(),
            message: e.to_string(),
        })?;
    Ok(revived.into_iter().map(|r| r.id).collect())
}

fn requeue_of(r: &Revived, keys: &Keys) -> Requeue {
    Requeue {
        partition: (r.partition.max(0) as u16) % keys.partitions().max(1),
        lane: r.lane.parse().unwrap_or(Lane::Bulk),
        id: JobId::from(r.id),
        idem: r.idempotency_key.clone(),
        enqueued_at_ms: r.enqueued_at.timestamp_millis(),
        payload: r.payload.clone(),
        replays: r.replays.max(0) as u32,
        tenant: r.tenant.clone(),
    }
}
