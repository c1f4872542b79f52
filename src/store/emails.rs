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
    /// A future `send_at`, if any: the reconciler leaves the row alone until then.
    pub due_at: Option<DateTime<Utc>>,
}

/// A job this worker now owns: it may send it, and only it may record the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub id: Uuid,
    pub attempt: i32,
    /// The job was taken over from a claim that expired while `sending`: the earlier attempt
    /// may have reached the provider, so this one may duplicate it. The claim statement logs
    /// that earlier attempt as `unknown`.
    pub takeover: bool,
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
    due_at: Vec<Option<DateTime<Utc>>>,
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
            c.due_at.push(r.due_at);
        }
        c
    }
}

/// A job of the batch that is `dead` in the ledger: its entry belongs in the dead-letter
/// stream, never plainly acked (`mailfleet dlq` could not see or replay it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub id: Uuid,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// This very claim made it dead: it was taken over with its attempts used up (every
    /// attempt ended without an outcome, e.g. a job that crashes its worker). Otherwise it was
    /// dead already, and the dead-letter write that should have followed never happened.
    pub capped: bool,
}

/// The result of claiming a batch.
#[derive(Debug, Default)]
pub struct ClaimResult {
    /// Jobs this worker now owns.
    pub claimed: Vec<Claimed>,
    /// Jobs already final (`sent`, `failed`, ...) other than `dead`: their entries are acked
    /// without a send.
    pub finished: Vec<Uuid>,
    /// Jobs `dead` in the ledger: their entries go through the (idempotent) dead-letter path.
    pub dead: Vec<DeadRow>,
    // Any other id of the batch is being sent under a live claim: its entry stays pending and
    // is reclaimed later, when that claim is either final or expired.
}

/// The statuses after which nothing more happens to a job on its own: what `report` counts as
/// final and what retention may delete.
pub const FINAL: &[&str] = &[
    "sent",
    "failed",
    "dead",
    "suppressed",
    "unknown",
    "delivered",
    "bounced",
    "complained",
];

/// Claim a batch in one statement. A row is claimable when it is new, `queued`, `retrying`, or
/// `sending` under a claim older than `visibility_ms` (its worker is presumed dead). A takeover
/// of a row whose `attempts` already reached `max_attempts` makes it `dead` instead (reported
/// in [`ClaimResult::dead`]): a job whose every attempt ends without an outcome (it crashes its
/// worker) stops there, across re-enqueues too. `rows` must not repeat an id.
pub async fn claim(
    pool: &PgPool,
    rows: &[NewRow],
    token: Uuid,
    visibility_ms: i64,
    max_attempts: i32,
) -> Result<ClaimResult, StoreError> {
    if rows.is_empty() {
        return Ok(ClaimResult::default());
    }
    let c = Columns::of(rows);
    // Every CTE sees the table as it was before the INSERT (one snapshot per statement), so
    // `prev` holds each row's state before this claim and the final SELECT finds exactly the
    // rows that were already final. ON CONFLICT re-checks its WHERE against the latest row
    // version, so of two racing claims only one wins, and a claim that wins over a `sending`
    // row under another token really took over an expired claim. A row already `sending` under
    // this very token is this claim committed once before (the reply was lost and the claim
    // retried): it is claimed again as it is, not left for the visibility timeout.
    let rows_out: Vec<(Uuid, i32, String, bool, bool, Option<String>)> = sqlx::query_as(
        r#"
        WITH prev AS (
            SELECT id, status, attempts, provider, claimed_at, claim_token, last_error
              FROM emails WHERE id = ANY($1)
        ), ins AS (
        INSERT INTO emails AS e (id, status, lane, partition, idempotency_key, tenant, recipient_domain,
                                 template, payload, enqueued_at, due_at, attempts, claim_token, claimed_at)
        SELECT id, 'sending', lane, partition, idem, tenant, domain, template, payload, enq, due, 1, $10, now()
        FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::timestamptz[], $12::timestamptz[])
             AS t(id, lane, partition, idem, tenant, domain, template, payload, enq, due)
        ON CONFLICT (id) DO UPDATE
           SET status = CASE WHEN e.status = 'sending' AND e.claim_token <> EXCLUDED.claim_token
                                  AND e.attempts >= $13 THEN 'dead' ELSE 'sending' END,
               last_error = CASE WHEN e.status = 'sending' AND e.claim_token <> EXCLUDED.claim_token
                                      AND e.attempts >= $13
                                 THEN 'every one of ' || e.attempts || ' attempts ended without an outcome'
                                 ELSE e.last_error END,
               recorded_at = CASE WHEN e.status = 'sending' AND e.claim_token <> EXCLUDED.claim_token
                                       AND e.attempts >= $13 THEN now() ELSE e.recorded_at END,
               attempts = CASE WHEN e.claim_token = EXCLUDED.claim_token THEN e.attempts
                               WHEN e.status = 'sending' AND e.attempts >= $13 THEN e.attempts
                               ELSE e.attempts + 1 END,
               claim_token = EXCLUDED.claim_token, claimed_at = now(), updated_at = now()
         WHERE e.status IN ('queued', 'retrying')
            OR (e.status = 'sending' AND e.claim_token = EXCLUDED.claim_token)
            OR (e.status = 'sending' AND e.claimed_at < now() - make_interval(secs => $11::float8 / 1000))
        RETURNING e.id, e.attempts, e.status, e.last_error
        ), takeover AS (
            INSERT INTO email_attempts (email_id, attempt, provider, outcome, error, started_at, finished_at)
            SELECT prev.id, prev.attempts, prev.provider, 'unknown',
                   'claim expired: the worker stopped before recording an outcome', prev.claimed_at, now()
              FROM ins JOIN prev USING (id)
             WHERE prev.status = 'sending' AND prev.claim_token IS DISTINCT FROM $10
        )
        SELECT ins.id, ins.attempts, ins.status, true,
               prev.status IS NOT DISTINCT FROM 'sending' AND prev.claim_token IS DISTINCT FROM $10,
               ins.last_error
          FROM ins LEFT JOIN prev USING (id)
        UNION ALL
        SELECT id, attempts, status, false, false, last_error FROM prev
         WHERE status IN ('sent', 'failed', 'dead', 'suppressed', 'unknown', 'delivered', 'bounced', 'complained')
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
    .bind(&c.due_at)
    .bind(max_attempts)
    .fetch_all(pool)
    .await
    .map_err(q("claiming a batch"))?;
    let mut out = ClaimResult::default();
    for (id, attempt, status, mine, takeover, last_error) in rows_out {
        match (mine, status.as_str()) {
            (_, "dead") => out.dead.push(DeadRow {
                id,
                attempts: attempt,
                last_error,
                capped: mine,
            }),
            (true, _) => out.claimed.push(Claimed {
                id,
                attempt,
                takeover,
            }),
            (false, _) => out.finished.push(id),
        }
    }
    Ok(out)
}

/// Insert `queued` rows for jobs the API accepted or a schedule fanned out (no-op for rows that
/// exist already). Runs on a pool or inside a transaction; returns how many rows were new.
pub async fn insert_queued<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    rows: &[NewRow],
) -> Result<u64, StoreError> {
    insert_as(executor, rows, "queued").await
}

/// Insert final `suppressed` rows for jobs the API refused to enqueue because every `to`
/// recipient is suppressed (no-op for rows that exist already).
pub async fn insert_suppressed(pool: &PgPool, rows: &[NewRow]) -> Result<u64, StoreError> {
    insert_as(pool, rows, "suppressed").await
}

async fn insert_as<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    rows: &[NewRow],
    status: &'static str,
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
               CASE WHEN $11 = 'queued' THEN NULL ELSE now() END
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
    .execute(executor)
    .await
    .map_err(q("recording accepted jobs"))?;
    Ok(r.rows_affected())
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
        status.push(o.status);
        attempt.push(o.attempt);
        provider.push(o.provider.as_deref());
        msg.push(o.message_id.as_deref());
        error.push(o.error.as_deref());
        http.push(o.http_status);
        started.push(o.started_at);
        finished.push(o.finished_at);
        due.push(o.retry_in_ms);
        logged.push(o.attempt_outcome.unwrap_or(o.status));
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
                   sent_at = CASE WHEN o.status = 'sent' THEN o.finished_at ELSE e.sent_at END,
                   due_at = now() + make_interval(secs => o.retry_in_ms / 1000.0),
                   recorded_at = now(), updated_at = now()
              FROM o
             WHERE e.id = o.id AND e.claim_token = o.token AND e.status = 'sending'
            RETURNING e.id
        ), done AS (
            -- This very outcome, committed before (the reply was lost and the record retried):
            -- report it applied again, and log its attempt only once. CTEs see the table as it
            -- was before this statement, so these rows are not among upd's.
            SELECT e.id FROM emails e JOIN o ON e.id = o.id
             WHERE e.claim_token = o.token AND e.status = o.status AND e.status <> 'sending'
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

/// Which of `ids` have a row (a worker claimed them at least once).
pub async fn existing(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM emails WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(q("selecting existing emails"))
}

/// Keep live claims fresh: a send still in progress after most of the visibility timeout must
/// not look abandoned. Refreshes `claimed_at` only where `(id, token)` still holds the claim.
/// Returns how many rows were refreshed.
pub async fn touch_claims(pool: &PgPool, claims: &[(Uuid, Uuid)]) -> Result<u64, StoreError> {
    if claims.is_empty() {
        return Ok(0);
    }
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = claims.iter().copied().unzip();
    // SKIP LOCKED: a row locked right now is being recorded or taken over, and either ends the
    // claim, so there is nothing to refresh. Waiting for it instead held every other row's lock
    // meanwhile, and the recorder, updating the same worker's rows in another order, deadlocked
    // with the heartbeat (Postgres then aborts one of them after a second).
    let r = sqlx::query(
        "WITH live AS (
             SELECT e.id FROM emails e
               JOIN UNNEST($1::uuid[], $2::uuid[]) AS t(id, token)
                 ON e.id = t.id AND e.claim_token = t.token
              WHERE e.status = 'sending'
                FOR UPDATE OF e SKIP LOCKED)
         UPDATE emails e SET claimed_at = now(), updated_at = now()
           FROM live WHERE e.id = live.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .execute(pool)
    .await
    .map_err(q("refreshing live claims"))?;
    Ok(r.rows_affected())
}

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
}

/// Take up to `limit` jobs that should have progressed long ago: `queued` or `retrying` rows
/// untouched for `after` and overdue by `after`, and `sending` rows whose claim expired
/// (`visibility_ms`) and that are untouched for `after`. Marks each one re-enqueued
/// (`reenqueued + 1`, `updated_at = now()`), so concurrent reconcilers on other workers skip
/// it (row locks, SKIP LOCKED) and the next pass leaves it alone for another `after`.
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
             WHERE status IN ('queued', 'sending', 'retrying')
               AND updated_at < now() - make_interval(secs => $1)
               AND (due_at IS NULL OR due_at < now() - make_interval(secs => $1))
               AND (status <> 'sending' OR claimed_at < now() - make_interval(secs => $2::float8 / 1000))
             ORDER BY updated_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED
        )
        UPDATE emails e SET updated_at = now(), reenqueued = e.reenqueued + 1
          FROM stuck WHERE e.id = stuck.id
        RETURNING e.id, e.lane, e.partition, e.idempotency_key, e.payload, e.enqueued_at, e.replays
        "#,
    )
    .bind(after.as_secs_f64())
    .bind(visibility_ms as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("taking overdue jobs"))
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
        "UPDATE emails SET status = 'dead', last_error = $2, claim_token = NULL, due_at = NULL,
                           recorded_at = now(), updated_at = now()
          WHERE id = ANY($1)
            AND (status IN ('queued', 'retrying')
                 OR (status = 'sending'
                     AND claimed_at < now() - make_interval(secs => $3::float8 / 2000)))",
    )
    .bind(ids)
    .bind(error)
    .bind(visibility_ms as f64)
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
        "UPDATE emails SET status = 'queued', attempts = 0, claim_token = NULL, due_at = NULL,
                           replays = replays + 1, updated_at = now()
          WHERE id = ANY($1) AND status = 'dead'",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(q("reviving dead jobs for replay"))?;
    Ok(r.rows_affected())
}

/// Attempts among `ids` whose outcome could not be known (logged `unknown`): the events after
/// which a duplicate send is legitimate.
pub async fn ambiguous_attempts(pool: &PgPool, ids: &[Uuid]) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM email_attempts WHERE email_id = ANY($1) AND outcome = 'unknown'",
    )
    .bind(ids)
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
        "SELECT id, lane, partition, idempotency_key, payload, enqueued_at, replays FROM emails
          WHERE id = ANY($1) AND status = 'queued' ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(q("loading queued jobs"))
}

/// Outcomes recorded in the last `secs` seconds, per lane and status (for `mailfleet status`).
pub async fn recent_outcomes(
    pool: &PgPool,
    secs: f64,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT lane, status, count(*) FROM emails
          WHERE recorded_at > now() - make_interval(secs => $1)
          GROUP BY lane, status ORDER BY lane, status",
    )
    .bind(secs)
    .fetch_all(pool)
    .await
    .map_err(q("counting recent outcomes"))
}
