//! What an operator does to single jobs (`mailfleet email list|cancel|retry`, the API's
//! `DELETE /v1/emails/{id}`): list them by status, cancel one still waiting, and put failed
//! ones back in the queue. Every write is conditional on the status it changes from, so a
//! worker's claim and an operator's action never both win.

use super::super::{StoreError, q};
use crate::domain::Status;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One row of `email list`: no address, no body.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub id: Uuid,
    pub status: String,
    pub lane: String,
    pub tenant: Option<String>,
    pub template: Option<String>,
    pub attempts: i32,
    pub provider: Option<String>,
    pub last_error: Option<String>,
    /// When a waiting job is due (a future `send_at`, a retry's time).
    pub due_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Which jobs to list or retry.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub tenant: Option<String>,
    /// Changed at or after this.
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Jobs matching `f`, the most recently changed first.
pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<Listed>, StoreError> {
    sqlx::query_as(
        "SELECT id, status, lane, tenant, template, attempts, provider, last_error, due_at,
                updated_at
           FROM emails
          WHERE ($1::text IS NULL OR status = $1)
            AND ($2::text IS NULL OR tenant = $2)
            AND ($3::timestamptz IS NULL OR updated_at >= $3)
          ORDER BY updated_at DESC LIMIT $4",
    )
    .bind(f.status)
    .bind(f.tenant.as_deref())
    .bind(f.since)
    .bind(f.limit.max(1))
    .fetch_all(pool)
    .await
    .map_err(q("listing emails"))
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It was waiting (queued or retrying) and is `cancelled` now.
    Cancelled,
    /// No such job (or, with a tenant, not that tenant's).
    NotFound,
    /// It is past waiting: being sent now, or final already.
    Too(Status),
}

/// Cancel job `id` if it still waits (`queued`, including a future `send_at`, or `retrying`
/// in the delayed set). Its stream or delayed-set entry stays where it is: the worker that
/// reads it finds the job final and acks it without a send.
pub async fn cancel(pool: &PgPool, id: Uuid, tenant: Option<&str>) -> Result<Cancel, StoreError> {
    let row: Option<(Status, bool)> = sqlx::query_as(
        "WITH upd AS (
             UPDATE emails SET status = $3, claim_token = NULL, due_at = NULL,
                    last_error = 'cancelled by an operator', recorded_at = now(),
                    updated_at = now()
              WHERE id = $1 AND status = ANY($4) AND ($2::text IS NULL OR tenant = $2)
             RETURNING id
         )
         SELECT status, EXISTS (SELECT 1 FROM upd) FROM emails
          WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id)
    .bind(tenant)
    .bind(Status::Cancelled)
    .bind(&Status::CLAIMABLE[..])
    .fetch_optional(pool)
    .await
    .map_err(q("cancelling an email"))?;
    Ok(match row {
        None => Cancel::NotFound,
        Some((_, true)) => Cancel::Cancelled,
        Some((s, false)) => Cancel::Too(s),
    })
}

/// The statuses `email retry` takes a job from: refused for good (`failed`, say by a template
/// error since fixed), or of an outcome nobody knows (`unknown`: a retry may duplicate it).
pub const RETRYABLE: [Status; 2] = [Status::Failed, Status::Unknown];

/// A job put back in the queue, with what its stream entry needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Revived {
    pub id: Uuid,
    pub lane: String,
    pub partition: i16,
    pub idempotency_key: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    pub payload: String,
    pub replays: i32,
    pub template: Option<String>,
    pub tenant: Option<String>,
}

/// Put the [`RETRYABLE`] jobs among `ids` (of `tenant`, when given) back to `queued` with a
/// fresh attempt budget; their attempt history stays. Returns those revived, for the caller to
/// push to their streams (if that fails, the reconciler re-enqueues them, like any `queued`
/// job Redis does not hold).
pub async fn revive(
    pool: &PgPool,
    ids: &[Uuid],
    tenant: Option<&str>,
) -> Result<Vec<Revived>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "UPDATE emails SET status = $3, attempts = 0, claim_token = NULL, due_at = NULL,
                last_error = NULL, recorded_at = NULL, updated_at = now()
          WHERE id = ANY($1) AND status = ANY($4) AND ($2::text IS NULL OR tenant = $2)
         RETURNING id, lane, partition, idempotency_key, enqueued_at, payload, replays,
                   template, tenant",
    )
    .bind(ids)
    .bind(tenant)
    .bind(Status::Queued)
    .bind(&RETRYABLE[..])
    .fetch_all(pool)
    .await
    .map_err(q("putting failed emails back in the queue"))
}
