//! The `emails` ledger and its `email_attempts` log: claim, record, look up.

use super::{StoreError, q};
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
}

/// A job this worker now owns: it may send it, and only it may record the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub id: Uuid,
    pub attempt: i32,
}

#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    lane: Vec<&'static str>,
    partition: Vec<i16>,
    idem: Vec<Option<String>>,
    tenant: Vec<Option<String>>,
    domain: Vec<String>,
    template: Vec<Option<String>>,
    payload: Vec<String>,
    enqueued_at: Vec<DateTime<Utc>>,
}

impl Columns {
    fn of(rows: &[NewRow]) -> Self {
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
        }
        c
    }
}

/// The result of claiming a batch.
#[derive(Debug, Default)]
pub struct ClaimResult {
    /// Jobs this worker now owns.
    pub claimed: Vec<Claimed>,
    /// Jobs already final (`sent`, `failed`, ...): their entries are acked without a send.
    pub finished: Vec<Uuid>,
    // Any other id of the batch is being sent under a live claim: its entry stays pending and
    // is reclaimed later, when that claim is either final or expired.
}

/// Claim a batch in one statement. A row is claimable when it is new, `queued`, `retrying`, or
/// `sending` under a claim older than `visibility_ms` (its worker is presumed dead). `rows` must
/// not repeat an id.
pub async fn claim(
    pool: &PgPool,
    rows: &[NewRow],
    token: Uuid,
    visibility_ms: i64,
) -> Result<ClaimResult, StoreError> {
    if rows.is_empty() {
        return Ok(ClaimResult::default());
    }
    let c = Columns::of(rows);
    // The outer SELECT sees the table as it was before the INSERT (one snapshot per statement),
    // so it finds exactly the rows that were already final.
    let rows_out: Vec<(Uuid, i32, bool)> = sqlx::query_as(
        r#"
        WITH ins AS (
        INSERT INTO emails AS e (id, status, lane, partition, idempotency_key, tenant, recipient_domain,
                                 template, payload, enqueued_at, attempts, claim_token, claimed_at)
        SELECT id, 'sending', lane, partition, idem, tenant, domain, template, payload, enq, 1, $10, now()
        FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::timestamptz[])
             AS t(id, lane, partition, idem, tenant, domain, template, payload, enq)
        ON CONFLICT (id) DO UPDATE
           SET status = 'sending', attempts = e.attempts + 1, claim_token = EXCLUDED.claim_token,
               claimed_at = now(), updated_at = now()
         WHERE e.status IN ('queued', 'retrying')
            OR (e.status = 'sending' AND e.claimed_at < now() - make_interval(secs => $11::float8 / 1000))
        RETURNING e.id, e.attempts
        )
        SELECT id, attempts, true FROM ins
        UNION ALL
        SELECT id, attempts, false FROM emails
         WHERE id = ANY($1) AND status IN ('sent', 'failed', 'dead', 'suppressed', 'unknown')
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
    .bind(token)
    .bind(visibility_ms as f64)
    .fetch_all(pool)
    .await
    .map_err(q("claiming a batch"))?;
    let mut out = ClaimResult::default();
    for (id, attempt, mine) in rows_out {
        if mine {
            out.claimed.push(Claimed { id, attempt });
        } else {
            out.finished.push(id);
        }
    }
    Ok(out)
}

/// Insert `queued` rows for jobs the API accepted (no-op for rows a worker already wrote).
pub async fn insert_queued(pool: &PgPool, rows: &[NewRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let c = Columns::of(rows);
    sqlx::query(
        r#"
        INSERT INTO emails (id, status, lane, partition, idempotency_key, tenant, recipient_domain,
                            template, payload, enqueued_at)
        SELECT id, 'queued', lane, partition, idem, tenant, domain, template, payload, enq
        FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::timestamptz[])
             AS t(id, lane, partition, idem, tenant, domain, template, payload, enq)
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
    .execute(pool)
    .await
    .map_err(q("recording accepted jobs"))?;
    Ok(())
}

/// The final (or retrying) state of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: Uuid,
    pub token: Uuid,
    /// One of `sent`, `failed`, `retrying`, `dead`, `unknown`.
    pub status: &'static str,
    pub attempt: i32,
    pub provider: Option<String>,
    pub message_id: Option<String>,
    pub error: Option<String>,
    pub http_status: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Record a batch of outcomes and their attempt rows in one statement (one transaction).
/// Returns the ids whose outcome was applied: an outcome whose claim token is no longer the
/// row's (the job was reclaimed) changes nothing, and the caller must not ack its entry.
pub async fn record(pool: &PgPool, outcomes: &[Outcome]) -> Result<Vec<Uuid>, StoreError> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let n = outcomes.len();
    let (mut id, mut token, mut status, mut attempt) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut provider, mut msg, mut error, mut http, mut started, mut finished) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for o in outcomes {
        id.push(o.id);
        token.push(o.token);
        status.push(o.status);
        attempt.push(o.attempt);
        provider.push(o.provider.as_deref());
        msg.push(o.message_id.as_deref());
        error.push(o.error.as_deref());
        http.push(o.http_status);
        started.push(o.started_at);
        finished.push(o.finished_at);
    }
    sqlx::query_scalar(
        r#"
        WITH o AS (
            SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[],
                                 $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[])
                AS o(id, token, status, attempt, provider, message_id, error, http_status, started_at, finished_at)
        ), upd AS (
            UPDATE emails e
               SET status = o.status, provider = COALESCE(o.provider, e.provider),
                   provider_message_id = COALESCE(o.message_id, e.provider_message_id),
                   last_error = o.error,
                   sent_at = CASE WHEN o.status = 'sent' THEN o.finished_at ELSE e.sent_at END,
                   recorded_at = now(), updated_at = now()
              FROM o
             WHERE e.id = o.id AND e.claim_token = o.token AND e.status = 'sending'
            RETURNING e.id
        ), log AS (
            INSERT INTO email_attempts (email_id, attempt, provider, outcome, http_status, error,
                                        started_at, finished_at)
            SELECT id, attempt, provider, status, http_status, error, started_at, finished_at FROM o
        )
        SELECT id FROM upd
        "#,
    )
    .bind(&id)
    .bind(&token)
    .bind(&status)
    .bind(&attempt)
    .bind(&provider)
    .bind(&msg)
    .bind(&error)
    .bind(&http)
    .bind(&started)
    .bind(&finished)
    .fetch_all(pool)
    .await
    .map_err(q("recording outcomes"))
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
}

pub async fn status(pool: &PgPool, id: Uuid) -> Result<Option<EmailStatus>, StoreError> {
    sqlx::query_as(
        "SELECT id, status, lane, attempts, provider, provider_message_id, last_error, enqueued_at,
                sent_at, updated_at
           FROM emails WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(q("looking up an email"))
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
                   FROM emails WHERE id = ANY($1) AND status = 'sent') t",
    )
    .bind(ids)
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
    statuses: &[&str],
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM emails WHERE id = ANY($1) AND status = ANY($2)")
        .bind(ids)
        .bind(statuses)
        .fetch_all(pool)
        .await
        .map_err(q("selecting emails by status"))
}
