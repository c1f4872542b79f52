//! The leader's batched writes for many schedules at once: the ticks of a pass in one
//! statement, and the fan-outs of many small audiences in one transaction. Each takes the
//! caller's connection, inside a fenced transaction (`lease::fenced`), like the one-schedule
//! writes of [`super::schedules`], with the same conditions, so exactly-once per (schedule,
//! tick) holds whichever path wrote it.

use super::audiences::Member;
use super::schedules::{RUN_COLUMNS, Run};
use super::{StoreError, q};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// One tick to record: the schedule's `next_tick` must still be `expected`.
#[derive(Debug, Clone)]
pub struct Fire {
    pub schedule_id: i64,
    pub expected: DateTime<Utc>,
    pub tick: DateTime<Utc>,
    pub next: DateTime<Utc>,
    /// The run's status: `fanning_out`, `skipped` or `stale`.
    pub status: &'static str,
    pub skipped_ticks: i32,
    pub detail: Option<String>,
}

/// Record many ticks in one statement (`fired_at` is the statement's time, not the pass
/// transaction's start), at most one per schedule (the caller sends a
/// schedule's later ticks in a later call, after this one moved its `next_tick`). A schedule
/// whose `next_tick` is no longer `expected`, or that was paused, gets no run: it is absent
/// from the answer and the caller re-reads it on its next pass.
pub async fn fire_many(
    conn: &mut PgConnection,
    fires: &[Fire],
    token: i64,
) -> Result<Vec<Run>, StoreError> {
    if fires.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = fires.iter().map(|f| f.schedule_id).collect();
    let expected: Vec<DateTime<Utc>> = fires.iter().map(|f| f.expected).collect();
    let ticks: Vec<DateTime<Utc>> = fires.iter().map(|f| f.tick).collect();
    let next: Vec<DateTime<Utc>> = fires.iter().map(|f| f.next).collect();
    let status: Vec<&str> = fires.iter().map(|f| f.status).collect();
    let skipped: Vec<i32> = fires.iter().map(|f| f.skipped_ticks).collect();
    let detail: Vec<Option<String>> = fires.iter().map(|f| f.detail.clone()).collect();
    sqlx::query_as(&format!(
        "WITH i AS (
             SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[],
                                  $4::timestamptz[], $5::text[], $6::int[], $7::text[])
                    AS i(id, expected, tick, next, status, skipped, detail)
         ), adv AS (
             UPDATE schedules s SET next_tick = i.next, updated_at = now()
               FROM i
              WHERE s.id = i.id AND s.next_tick = i.expected AND s.enabled
             RETURNING s.id, s.audience_id, i.tick, i.status, i.skipped, i.detail
         )
         INSERT INTO schedule_runs (schedule_id, tick, status, token, fired_at, total,
                                    skipped_ticks, detail, finished_at)
         SELECT adv.id, adv.tick, adv.status, $8, clock_timestamp(),
                CASE WHEN adv.status = 'fanning_out' THEN
                    (SELECT count(*) FROM audience_members m
                      WHERE m.audience_id = adv.audience_id AND m.subscribed)
                ELSE 0 END,
                adv.skipped, adv.detail,
                CASE WHEN adv.status = 'fanning_out' THEN NULL ELSE clock_timestamp() END
           FROM adv
         ON CONFLICT (schedule_id, tick) DO NOTHING
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(&ids)
    .bind(&expected)
    .bind(&ticks)
    .bind(&next)
    .bind(&status)
    .bind(&skipped)
    .bind(&detail)
    .bind(token)
    .fetch_all(conn)
    .await
    .map_err(q("firing a pass of scheduled ticks"))
}

/// The subscribed members of each audience (those of an enabled schedule only), at most
/// `cap + 1` per audience, so the caller sees which audiences are larger than `cap`.
pub async fn members_of(
    conn: &mut PgConnection,
    audience_ids: &[i64],
    cap: i64,
) -> Result<Vec<(i64, Member)>, StoreError> {
    let rows: Vec<(i64, i64, String, serde_json::Value)> = sqlx::query_as(
        "SELECT audience_id, id, email, vars FROM (
             SELECT audience_id, id, email, vars,
                    row_number() OVER (PARTITION BY audience_id ORDER BY id) AS n
               FROM audience_members
              WHERE audience_id = ANY($1) AND subscribed
         ) m WHERE n <= $2 + 1 ORDER BY audience_id, id",
    )
    .bind(audience_ids)
    .bind(cap)
    .fetch_all(conn)
    .await
    .map_err(q("reading the members of small audiences"))?;
    Ok(rows
        .into_iter()
        .map(|(a, id, email, vars)| (a, Member { id, email, vars }))
        .collect())
}

/// The ids of the enabled schedules among `ids` (a fan-out halts while its schedule is paused).
pub async fn enabled_of(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar("SELECT id FROM schedules WHERE id = ANY($1) AND enabled")
        .bind(ids)
        .fetch_all(conn)
        .await
        .map_err(q("reading which schedules are enabled"))
}

/// One run's batch: its jobs are committed through member `cursor`, `added` of them new.
#[derive(Debug, Clone, Copy)]
pub struct Advance {
    pub schedule_id: i64,
    pub tick: DateTime<Utc>,
    pub cursor: i64,
    pub added: i64,
}

/// Move many runs' cursors in one statement (`pushed` stays: their jobs are pushed after the
/// commit). Returns how many moved; fewer than asked means some run is no longer fanning out
/// from where the caller read it, and the caller rolls back.
pub async fn advance_runs(conn: &mut PgConnection, runs: &[Advance]) -> Result<u64, StoreError> {
    let ids: Vec<i64> = runs.iter().map(|r| r.schedule_id).collect();
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r.tick).collect();
    let cursors: Vec<i64> = runs.iter().map(|r| r.cursor).collect();
    let added: Vec<i64> = runs.iter().map(|r| r.added).collect();
    let n = sqlx::query(
        "UPDATE schedule_runs r SET cursor = i.cursor, enqueued = r.enqueued + i.added,
                updated_at = now()
           FROM UNNEST($1::bigint[], $2::timestamptz[], $3::bigint[], $4::bigint[])
                AS i(id, tick, cursor, added)
          WHERE r.schedule_id = i.id AND r.tick = i.tick AND r.status = 'fanning_out'
            AND r.cursor <= i.cursor",
    )
    .bind(&ids)
    .bind(&ticks)
    .bind(&cursors)
    .bind(&added)
    .execute(conn)
    .await
    .map_err(q("advancing a batch of fan-outs"))?
    .rows_affected();
    Ok(n)
}

/// Mark many runs `done` (their jobs are all pushed). Returns how many were still fanning out.
pub async fn finish_runs(
    conn: &mut PgConnection,
    runs: &[(i64, DateTime<Utc>)],
) -> Result<u64, StoreError> {
    let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r.1).collect();
    let n = sqlx::query(
        "UPDATE schedule_runs r SET status = 'done', pushed = r.cursor, finished_at = now(),
                updated_at = now()
           FROM UNNEST($1::bigint[], $2::timestamptz[]) AS i(id, tick)
          WHERE r.schedule_id = i.id AND r.tick = i.tick AND r.status = 'fanning_out'",
    )
    .bind(&ids)
    .bind(&ticks)
    .execute(conn)
    .await
    .map_err(q("finishing a batch of fan-outs"))?
    .rows_affected();
    Ok(n)
}
