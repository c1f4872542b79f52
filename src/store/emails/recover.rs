//! Recovery: the reconciler's overdue jobs, the ledger's side of dead-lettering, and the
//! revival of dead jobs for a dead-letter replay.

use crate::domain::Status;
use crate::store::{StoreError, q};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A job the reconciler puts back on its stream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Overdue {
    pub id: Uuid,
    pub lane: String,
    pub partition: i16,
    pub idempotency_key: Option<String>,
    pub payload: String,
    pub enqueued_at: DateTime<Utc>,
    /// Dead-letter replays so far: the rebuilt entry carries them.
    pub replays: i32,
    pub status: String,
    pub tenant: Option<String>,
    /// When it was due (a delayed send, a retry): when its entry was (re)added to a stream.
    pub due_at: Option<DateTime<Utc>>,
    /// When the reconciler last put it back on a stream.
    pub requeued_at: Option<DateTime<Utc>>,
}

impl Overdue {
    /// The times at which an entry of this job may have been added to a stream: when it was
    /// due (or enqueued), and when the reconciler last re-enqueued it.
    pub fn entry_times_ms(&self) -> impl Iterator<Item = i64> + '_ {
        std::iter::once(self.due_at.unwrap_or(self.enqueued_at))
            .chain(self.requeued_at)
            .map(|t| t.timestamp_millis())
    }
}

/// Take up to `limit` jobs that should have progressed long ago: `queued` or `retrying` rows
/// untouched for `after` and overdue by `after`, and `sending` rows whose claim expired
/// (`visibility_ms`) and that are untouched for `after`. Stamps each one (`updated_at =
/// now()`), so concurrent reconcilers on other workers skip it (row locks, SKIP LOCKED) and the
/// next pass leaves it alone for another `after`, whether or not this pass re-enqueues it
/// ([`note_reenqueued`] counts those that were).
pub async fn take_overdue(
    pool: &PgPool,
    after: std::time::Duration,
    visibility_ms: i64,
    limit: i64,
) -> Result<Vec<Overdue>, StoreError> {
    sqlx::query_as(
        r#"
        WITH stuck AS (
            SELECT id FROM emails
             WHERE status = ANY($4)
               AND updated_at < now() - make_interval(secs => $1)
               AND (due_at IS NULL OR due_at < now() - make_interval(secs => $1))
               AND (status <> $5 OR claimed_at < now() - make_interval(secs => $2::float8 / 1000))
             ORDER BY updated_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED
        )
        UPDATE emails e SET updated_at = now()
          FROM stuck WHERE e.id = stuck.id
        RETURNING e.id, e.lane, e.partition, e.idempotency_key, e.payload, e.enqueued_at, e.replays,
                  e.status, e.tenant, e.due_at, e.requeued_at
        "#,
    )
    .bind(after.as_secs_f64())
    .bind(visibility_ms as f64)
    .bind(limit)
    .bind(&Status::OPEN[..])
    .bind(Status::Sending)
    .fetch_all(pool)
    .await
    .map_err(q("taking overdue jobs"))
}

/// Count a re-enqueue on each of `ids` (`reenqueued + 1`) and note when (`requeued_at`).
pub async fn note_reenqueued(pool: &PgPool, ids: &[Uuid]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "UPDATE emails SET reenqueued = reenqueued + 1, requeued_at = now() WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(q("counting re-enqueues"))?;
    Ok(r.rows_affected())
}

/// Make the jobs among `ids` `dead` whose entry `reclaim.lua` dead-lettered at max deliveries,
/// so Postgres agrees with the dead-letter stream and the reconciler never re-enqueues them
/// (each re-enqueue would start the crashes again with a fresh delivery count). A row that is
/// final, or `sending` under a claim refreshed within half the visibility timeout (another entry
/// of the job is live), is left alone. Returns how many rows became dead.
pub async fn mark_dead(
    pool: &PgPool,
    ids: &[Uuid],
    error: &str,
    visibility_ms: i64,
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "UPDATE emails SET status = $4, last_error = $2, claim_token = NULL, due_at = NULL,
                           recorded_at = now(), updated_at = now()
          WHERE id = ANY($1)
            AND (status = ANY($5)
                 OR (status = $6
                     AND claimed_at < now() - make_interval(secs => $3::float8 / 2000)))",
    )
    .bind(ids)
    .bind(error)
    .bind(visibility_ms as f64)
    .bind(Status::Dead)
    .bind(&Status::CLAIMABLE[..])
    .bind(Status::Sending)
    .execute(pool)
    .await
    .map_err(q("marking dead-lettered jobs dead"))?;
    Ok(r.rows_affected())
}

/// Give `dead` rows among `ids` a fresh start for a dead-letter replay: `queued` with a new
/// attempt budget and one more replay counted (`replays`, which the reconciler writes into any
/// entry it rebuilds). Their attempt log stays. Rows in any other state are left as they are.
pub async fn revive_dead(pool: &PgPool, ids: &[Uuid]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "UPDATE emails SET status = $2, attempts = 0, claim_token = NULL, due_at = NULL,
                           replays = replays + 1, updated_at = now()
          WHERE id = ANY($1) AND status = $3",
    )
    .bind(ids)
    .bind(Status::Queued)
    .bind(Status::Dead)
    .execute(pool)
    .await
    .map_err(q("reviving dead jobs for replay"))?;
    Ok(r.rows_affected())
}

/// Attempts among `ids` whose outcome could not be known (logged `unknown`): the events after
/// which a duplicate send is legitimate.
pub async fn ambiguous_attempts(pool: &PgPool, ids: &[Uuid]) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = ANY($1) AND outcome = $2",
    )
    .bind(ids)
    .bind(Status::Unknown.as_str())
    .fetch_one(pool)
    .await
    .map_err(q("counting ambiguous attempts"))
}

/// The `queued` rows among `ids`, to put (back) on their streams: jobs committed in Postgres
/// whose XADD may not have happened.
pub async fn queued_of(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Overdue>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT id, lane, partition, idempotency_key, payload, enqueued_at, replays, status,
                tenant, due_at, requeued_at
           FROM emails WHERE id = ANY($1) AND status = $2 ORDER BY id",
    )
    .bind(ids)
    .bind(Status::Queued)
    .fetch_all(pool)
    .await
    .map_err(q("loading queued jobs"))
}
