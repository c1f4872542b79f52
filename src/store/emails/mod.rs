//! The `emails` ledger and its `email_attempts` log. One file per part of a job's life:
//! [`claim`] (a worker takes a batch, and keeps its claims fresh), [`record`] (outcomes and
//! their attempt rows), [`recover`] (the reconciler, dead-lettering and replay), [`operate`]
//! (an operator's list, cancel and retry), and here the rows written at accept and the
//! look-ups.
//!
//! Every status is a [`Status`], bound as a parameter: no statement spells one.

mod claim;
pub mod idempotency;
pub mod operate;
mod record;
mod recover;

pub use claim::{ClaimResult, Claimed, DeadRow, claim, touch_claims};
pub use record::{Outcome, Tried, record};
pub use recover::{
    Overdue, ambiguous_attempts, mark_dead, note_reenqueued, queued_of, revive_dead, take_overdue,
};

use super::{StoreError, q};
use crate::domain::Status;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// What the first sight of a job writes.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub id: Uuid,
    pub lane: &'static str,
    pub partition: i16,
    pub idempotency_key: Option<String>,
    pub tenant: Option<String>,
    pub recipient_domain: String,
    pub template: Option<String>,
    pub payload: String,
    pub enqueued_at: DateTime<Utc>,
    /// A future `send_at`, if any: the reconciler leaves the row alone until then.
    pub due_at: Option<DateTime<Utc>>,
}

/// What a job's first row needs to know about it: the one builder for every place that writes
/// one (the worker's claim, the API's and the fan-out's `queued` rows).
pub struct JobFacts<'a> {
    pub id: crate::domain::JobId,
    pub lane: crate::domain::Lane,
    pub partition: u16,
    pub idempotency_key: Option<&'a str>,
    pub email: &'a crate::domain::Email,
    pub payload_json: &'a str,
    pub enqueued_at_ms: i64,
}

impl NewRow {
    pub fn of(j: JobFacts<'_>) -> Self {
        NewRow {
            id: j.id.as_uuid(),
            lane: j.lane.as_str(),
            partition: j.partition as i16,
            idempotency_key: j.idempotency_key.map(str::to_owned),
            tenant: j.email.tenant.clone(),
            recipient_domain: j.email.recipient_domain().to_owned(),
            template: j.email.template_name().map(str::to_owned),
            payload: j.payload_json.to_owned(),
            enqueued_at: DateTime::from_timestamp_millis(j.enqueued_at_ms).unwrap_or_else(Utc::now),
            // A future `send_at`: the reconciler leaves the row alone until then.
            due_at: j.email.send_at,
        }
    }
}

#[derive(Default)]
pub(super) struct Columns {
    pub(super) id: Vec<Uuid>,
    pub(super) lane: Vec<&'static str>,
    pub(super) partition: Vec<i16>,
    pub(super) idem: Vec<Option<String>>,
    pub(super) tenant: Vec<Option<String>>,
    pub(super) domain: Vec<String>,
    pub(super) template: Vec<Option<String>>,
    pub(super) payload: Vec<String>,
    pub(super) enqueued_at: Vec<DateTime<Utc>>,
    pub(super) due_at: Vec<Option<DateTime<Utc>>>,
}

impl Columns {
    pub(super) fn of(rows: &[NewRow]) -> Self {
        let mut c = Columns::default();
        for r in rows {
            c.id.push(r.id);
            c.lane.push(r.lane);
            c.partition.push(r.partition);
            c.idem.push(r.idempotency_key.clone());
            c.tenant.push(r.tenant.clone());
            c.domain.push(r.recipient_domain.clone());
            c.template.push(r.template.clone());
            c.payload.push(r.payload.clone());
            c.enqueued_at.push(r.enqueued_at);
            c.due_at.push(r.due_at);
        }
        c
    }
}

/// Insert `queued` rows for jobs the API accepted or a schedule fanned out (no-op for rows that
/// exist already). Runs on a pool or inside a transaction; returns how many rows were new.
pub async fn insert_queued<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    rows: &[NewRow],
) -> Result<u64, StoreError> {
    insert_as(executor, rows, Status::Queued).await
}

/// Insert final `suppressed` rows for jobs the API refused to enqueue because every `to`
/// recipient is suppressed (no-op for rows that exist already).
pub async fn insert_suppressed(pool: &PgPool, rows: &[NewRow]) -> Result<u64, StoreError> {
    insert_as(pool, rows, Status::Suppressed).await
}

async fn insert_as<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    rows: &[NewRow],
    status: Status,
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let c = Columns::of(rows);
    let r = sqlx::query(
        r#"
        INSERT INTO emails (id, status, lane, partition, idempotency_key, tenant, recipient_domain,
                            template, payload, enqueued_at, due_at, recorded_at)
        SELECT id, $11, lane, partition, idem, tenant, domain, template, payload, enq, due,
               CASE WHEN $12 THEN now() END
        FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::timestamptz[], $10::timestamptz[])
             AS t(id, lane, partition, idem, tenant, domain, template, payload, enq, due)
        ON CONFLICT (id) DO NOTHING
        "#,
    )
    .bind(&c.id)
    .bind(&c.lane)
    .bind(&c.partition)
    .bind(&c.idem)
    .bind(&c.tenant)
    .bind(&c.domain)
    .bind(&c.template)
    .bind(&c.payload)
    .bind(&c.enqueued_at)
    .bind(&c.due_at)
    .bind(status)
    .bind(status.is_final())
    .execute(executor)
    .await
    .map_err(q("recording accepted jobs"))?;
    Ok(r.rows_affected())
}

/// What `GET /v1/emails/{id}` shows.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EmailStatus {
    pub id: Uuid,
    pub status: String,
    pub lane: String,
    pub attempts: i32,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub tenant: Option<String>,
}

/// The jobs holding idempotency key `key` (of `tenant`, when given), with their tenants: from
/// the idempotency backstop's table while the key is in its window (a primary-key look-up),
/// else from a scan of `emails`.
pub async fn ids_by_key(
    pool: &PgPool,
    key: &str,
    tenant: Option<&str>,
) -> Result<Vec<(Uuid, Option<String>)>, StoreError> {
    let held: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT job_id, tenant FROM idempotency_keys
          WHERE key = $1 AND ($2::text IS NULL OR tenant = $2) LIMIT 20",
    )
    .bind(key)
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(q("looking up an idempotency key"))?;
    if !held.is_empty() {
        return Ok(held
            .into_iter()
            .map(|(id, t)| (id, Some(t).filter(|t| !t.is_empty())))
            .collect());
    }
    sqlx::query_as(
        "SELECT id, tenant FROM emails
          WHERE idempotency_key = $1 AND ($2::text IS NULL OR tenant = $2)
          ORDER BY enqueued_at DESC LIMIT 20",
    )
    .bind(key)
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(q("looking up an idempotency key"))
}

pub async fn status(pool: &PgPool, id: Uuid) -> Result<Option<EmailStatus>, StoreError> {
    sqlx::query_as(
        "SELECT id, status, lane, attempts, provider, provider_message_id, last_error, enqueued_at,
                sent_at, updated_at, tenant
           FROM emails WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(q("looking up an email"))
}

/// One attempt of an email, as `mailfleet email show` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub provider: Option<String>,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// An email's attempts, oldest first (failed-over tries included).
pub async fn attempts(pool: &PgPool, id: Uuid) -> Result<Vec<AttemptRow>, StoreError> {
    sqlx::query_as(
        "SELECT attempt, provider, outcome, http_status, error, started_at, finished_at
           FROM email_attempts WHERE email_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(q("reading an email's attempts"))
}

/// Counts by status and the enqueue-to-recorded latency of the sent ones, over these ids.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub by_status: Vec<(String, i64)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn summary(pool: &PgPool, ids: &[Uuid]) -> Result<Summary, StoreError> {
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM emails WHERE id = ANY($1) GROUP BY status ORDER BY status",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(q("counting emails by status"))?;
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
           FROM (SELECT extract(epoch FROM (recorded_at - enqueued_at))::float8 * 1000 AS ms
                   FROM emails WHERE id = ANY($1) AND status = $2) t",
    )
    .bind(ids)
    .bind(Status::Sent)
    .fetch_one(pool)
    .await
    .map_err(q("measuring latency"))?;
    Ok(Summary {
        by_status,
        p50_ms: p50.unwrap_or(0.0),
        p99_ms: p99.unwrap_or(0.0),
    })
}

/// Which of `ids` have one of `statuses`.
pub async fn ids_with_status(
    pool: &PgPool,
    ids: &[Uuid],
    statuses: &[Status],
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM emails WHERE id = ANY($1) AND status = ANY($2)")
        .bind(ids)
        .bind(statuses)
        .fetch_all(pool)
        .await
        .map_err(q("selecting emails by status"))
}

/// Which of `ids` were refused as `duplicate` while another job holding the same (tenant,
/// idempotency key) was sent: their email went out under that job's id.
pub async fn duplicates_sent_by_twin(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT d.id FROM emails d
          WHERE d.id = ANY($1) AND d.status = $2
            AND EXISTS (SELECT 1 FROM emails s
                         WHERE s.idempotency_key = d.idempotency_key
                           AND s.tenant IS NOT DISTINCT FROM d.tenant
                           AND s.id <> d.id AND s.status = $3)",
    )
    .bind(ids)
    .bind(Status::Duplicate)
    .bind(Status::Sent)
    .fetch_all(pool)
    .await
    .map_err(q("selecting duplicates sent by their twin"))
}

/// Which of `ids` are `queued` for a time still to come (a `send_at` in the future).
pub async fn scheduled_later(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT id FROM emails WHERE id = ANY($1) AND status = $2 AND due_at > now()",
    )
    .bind(ids)
    .bind(Status::Queued)
    .fetch_all(pool)
    .await
    .map_err(q("selecting emails scheduled later"))
}

/// Which of `ids` have a row (a worker claimed them at least once).
pub async fn existing(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM emails WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(q("selecting existing emails"))
}

/// Outcomes recorded in the last `secs` seconds, per lane and status (for `mailfleet status`).
/// Emails of each of `tenants` sent over the last `secs` seconds (the busiest tenants'
/// rates in `mailfleet status`).
pub async fn recent_sent_by_tenant(
    pool: &PgPool,
    tenants: &[String],
    secs: f64,
) -> Result<Vec<(String, i64)>, StoreError> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT tenant, count(*) FROM emails
          WHERE recorded_at > now() - make_interval(secs => $1)
            AND tenant = ANY($2) AND status = $3
          GROUP BY tenant",
    )
    .bind(secs)
    .bind(tenants)
    .bind(crate::domain::Status::Sent.as_str())
    .fetch_all(pool)
    .await
    .map_err(q("counting the busiest tenants' recent sends"))
}

/// Rows of one lane and status: recorded in the last `secs`, recorded today (UTC, by
/// Postgres' clock), and all kept.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutcomeCount {
    pub lane: String,
    pub status: String,
    pub recent: i64,
    pub today: i64,
    pub all: i64,
}

/// One status's totals, as `mailfleet status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub today: i64,
    pub all: i64,
}

/// Every lane and status with its counts (one scan of `emails`, which `mailfleet status`
/// and /admin pay for; the send path never runs it).
pub async fn outcome_counts(pool: &PgPool, secs: f64) -> Result<Vec<OutcomeCount>, StoreError> {
    sqlx::query_as(
        "SELECT lane, status,
                count(*) FILTER (WHERE recorded_at > now() - make_interval(secs => $1)) AS recent,
                count(*) FILTER (WHERE COALESCE(recorded_at, updated_at)
                                       >= date_trunc('day', now() AT TIME ZONE 'UTC')
                                            AT TIME ZONE 'UTC') AS today,
                count(*) AS \"all\"
           FROM emails GROUP BY lane, status ORDER BY lane, status",
    )
    .bind(secs)
    .fetch_all(pool)
    .await
    .map_err(q("counting outcomes"))
}
