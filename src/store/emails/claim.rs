//! Claiming: the one statement that makes a worker a job's owner (or tells it the job is
//! final, dead, or someone else's), and the heartbeat's refresh of live claims.

use super::{Columns, NewRow};
use crate::domain::Status;
use crate::store::{StoreError, q};
use sqlx::PgPool;
use uuid::Uuid;

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
    let rows_out: Vec<(Uuid, i32, Status, bool, bool, Option<String>)> = sqlx::query_as(
        r#"
        WITH prev AS (
            SELECT id, status, attempts, provider, claimed_at, claim_token, last_error
              FROM emails WHERE id = ANY($1)
        ), ins AS (
        INSERT INTO emails AS e (id, status, lane, partition, idempotency_key, tenant, recipient_domain,
                                 template, payload, enqueued_at, due_at, attempts, claim_token, claimed_at)
        SELECT id, $14, lane, partition, idem, tenant, domain, template, payload, enq, due, 1, $10, now()
        FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::timestamptz[], $12::timestamptz[])
             AS t(id, lane, partition, idem, tenant, domain, template, payload, enq, due)
        ON CONFLICT (id) DO UPDATE
           SET status = CASE WHEN e.status = $14 AND e.claim_token <> EXCLUDED.claim_token
                                  AND e.attempts >= $13 THEN $15 ELSE $14 END,
               last_error = CASE WHEN e.status = $14 AND e.claim_token <> EXCLUDED.claim_token
                                      AND e.attempts >= $13
                                 THEN 'every one of ' || e.attempts || ' attempts ended without an outcome'
                                 ELSE e.last_error END,
               recorded_at = CASE WHEN e.status = $14 AND e.claim_token <> EXCLUDED.claim_token
                                       AND e.attempts >= $13 THEN now() ELSE e.recorded_at END,
               attempts = CASE WHEN e.claim_token = EXCLUDED.claim_token THEN e.attempts
                               WHEN e.status = $14 AND e.attempts >= $13 THEN e.attempts
                               ELSE e.attempts + 1 END,
               claim_token = EXCLUDED.claim_token, claimed_at = now(), updated_at = now()
         WHERE e.status = ANY($16)
            OR (e.status = $14 AND e.claim_token = EXCLUDED.claim_token)
            OR (e.status = $14 AND e.claimed_at < now() - make_interval(secs => $11::float8 / 1000))
        RETURNING e.id, e.attempts, e.status, e.last_error
        ), takeover AS (
            INSERT INTO email_attempts (email_id, attempt, provider, outcome, error, started_at, finished_at)
            SELECT prev.id, prev.attempts, prev.provider, $17,
                   'claim expired: the worker stopped before recording an outcome', prev.claimed_at, now()
              FROM ins JOIN prev USING (id)
             WHERE prev.status = $14 AND prev.claim_token IS DISTINCT FROM $10
        )
        SELECT ins.id, ins.attempts, ins.status, true,
               prev.status IS NOT DISTINCT FROM $14 AND prev.claim_token IS DISTINCT FROM $10,
               ins.last_error
          FROM ins LEFT JOIN prev USING (id)
        UNION ALL
        SELECT id, attempts, status, false, false, last_error FROM prev WHERE status = ANY($18)
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
    .bind(Status::Sending)
    .bind(Status::Dead)
    .bind(&Status::CLAIMABLE[..])
    .bind(Status::Unknown.as_str())
    .bind(&Status::FINAL[..])
    .fetch_all(pool)
    .await
    .map_err(q("claiming a batch"))?;
    let mut out = ClaimResult::default();
    for (id, attempt, status, mine, takeover, last_error) in rows_out {
        match (mine, status) {
            (_, Status::Dead) => out.dead.push(DeadRow {
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
              WHERE e.status = $3
                FOR UPDATE OF e SKIP LOCKED)
         UPDATE emails e SET claimed_at = now(), updated_at = now()
           FROM live WHERE e.id = live.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(Status::Sending)
    .execute(pool)
    .await
    .map_err(q("refreshing live claims"))?;
    Ok(r.rows_affected())
}
