//! Recording: a batch of outcomes and their attempt rows in one statement, applied only under
//! the claim token that claimed each job.

use crate::domain::Status;
use crate::store::{StoreError, q};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The final (or retrying) state of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: Uuid,
    pub token: Uuid,
    /// `Sent`, `Failed`, `Retrying`, `Dead`, `Unknown` or `Suppressed`.
    pub status: Status,
    pub attempt: i32,
    pub provider: Option<String>,
    pub message_id: Option<String>,
    pub error: Option<String>,
    pub http_status: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// For `retrying`: in how many ms the retry is due, counted from Postgres' clock (the
    /// worker's own clock never decides a due time).
    pub retry_in_ms: Option<i64>,
    /// What the attempt log says happened when it differs from `status`: a retry after an
    /// ambiguous failure is logged `unknown` while the job becomes `retrying`.
    pub attempt_outcome: Option<&'static str>,
    /// Providers this attempt tried before the one that decided it, each of which proved it
    /// did not take the email (the route failed over): logged `failed_over`, one row each.
    pub tried: Vec<Tried>,
}

/// One provider an attempt tried and moved on from.
#[derive(Debug, Clone)]
pub struct Tried {
    pub provider: String,
    pub http_status: Option<i32>,
    pub error: String,
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
    let (mut due, mut logged) = (Vec::with_capacity(n), Vec::with_capacity(n));
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
        status.push(o.status.as_str());
        attempt.push(o.attempt);
        provider.push(o.provider.as_deref());
        msg.push(o.message_id.as_deref());
        error.push(o.error.as_deref());
        http.push(o.http_status);
        started.push(o.started_at);
        finished.push(o.finished_at);
        due.push(o.retry_in_ms);
        logged.push(o.attempt_outcome.unwrap_or(o.status.as_str()));
    }
    let tried = TriedColumns::of(outcomes);
    sqlx::query_scalar(
        r#"
        WITH o AS (
            SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[],
                                 $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[],
                                 $11::int8[], $12::text[])
                AS o(id, token, status, attempt, provider, message_id, error, http_status, started_at,
                     finished_at, retry_in_ms, logged)
        ), upd AS (
            UPDATE emails e
               SET status = o.status, provider = COALESCE(o.provider, e.provider),
                   -- A deferred attempt (every provider's breaker open) never reached a
                   -- provider: it gives its attempt back.
                   attempts = CASE WHEN o.logged = 'deferred' THEN GREATEST(e.attempts - 1, 0)
                                   ELSE e.attempts END,
                   provider_message_id = COALESCE(o.message_id, e.provider_message_id),
                   last_error = o.error,
                   sent_at = CASE WHEN o.status = $21 THEN o.finished_at ELSE e.sent_at END,
                   due_at = now() + make_interval(secs => o.retry_in_ms / 1000.0),
                   recorded_at = now(), updated_at = now()
              FROM o
             WHERE e.id = o.id AND e.claim_token = o.token AND e.status = $20
            RETURNING e.id
        ), done AS (
            -- This very outcome, committed before (the reply was lost and the record retried):
            -- report it applied again, and log its attempt only once. CTEs see the table as it
            -- was before this statement, so these rows are not among upd's.
            SELECT e.id FROM emails e JOIN o ON e.id = o.id
             WHERE e.claim_token = o.token AND e.status = o.status AND e.status <> $20
        ), log AS (
            INSERT INTO email_attempts (email_id, attempt, provider, outcome, http_status, error,
                                        started_at, finished_at)
            SELECT t.id, t.attempt, t.provider, 'failed_over', t.http_status, t.error, t.started_at,
                   t.finished_at
              FROM UNNEST($13::uuid[], $14::int4[], $15::text[], $16::int4[], $17::text[],
                          $18::timestamptz[], $19::timestamptz[])
                   AS t(id, attempt, provider, http_status, error, started_at, finished_at)
             WHERE t.id NOT IN (SELECT id FROM done)
            UNION ALL
            SELECT id, attempt, provider, logged, http_status, error, started_at, finished_at FROM o
             WHERE o.id NOT IN (SELECT id FROM done)
        )
        SELECT id FROM upd UNION ALL SELECT id FROM done
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
    .bind(&due)
    .bind(&logged)
    .bind(&tried.id)
    .bind(&tried.attempt)
    .bind(&tried.provider)
    .bind(&tried.http_status)
    .bind(&tried.error)
    .bind(&tried.started_at)
    .bind(&tried.finished_at)
    .bind(Status::Sending)
    .bind(Status::Sent)
    .fetch_all(pool)
    .await
    .map_err(q("recording outcomes"))
}

/// The `failed_over` attempt rows of a batch of outcomes, as columns for UNNEST.
#[derive(Default)]
struct TriedColumns<'a> {
    id: Vec<Uuid>,
    attempt: Vec<i32>,
    provider: Vec<&'a str>,
    http_status: Vec<Option<i32>>,
    error: Vec<&'a str>,
    started_at: Vec<DateTime<Utc>>,
    finished_at: Vec<DateTime<Utc>>,
}

impl<'a> TriedColumns<'a> {
    fn of(outcomes: &'a [Outcome]) -> Self {
        let mut c = TriedColumns::default();
        for o in outcomes {
            for t in &o.tried {
                c.id.push(o.id);
                c.attempt.push(o.attempt);
                c.provider.push(&t.provider);
                c.http_status.push(t.http_status);
                c.error.push(&t.error);
                c.started_at.push(t.started_at);
                c.finished_at.push(t.finished_at);
            }
        }
        c
    }
}
