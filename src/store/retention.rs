//! Retention: `mailfleet prune --older-than` deletes what a running cluster no longer needs.
//!
//! - `emails` rows in a final status whose job was enqueued before the cutoff (job ids are
//!   UUIDv7, so "enqueued before" is a range of the primary key and each batch is an index
//!   scan, never a scan of the table), with their `email_attempts` (ON DELETE CASCADE);
//! - `webhook_events` (event ids and single-use tokens) received before the cutoff;
//! - finished `schedule_runs` whose tick is before the cutoff;
//! - `idempotency_keys` whose dedup window has ended (whatever the cutoff: they hold nothing).
//!
//! Rows not final are never deleted: the reconciler still needs them.

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Status;

/// The smallest UUIDv7 of the millisecond `t`: every v7 id made before `t` sorts below it.
pub fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub emails: u64,
    pub attempts: u64,
    pub webhook_events: u64,
    pub schedule_runs: u64,
    pub idempotency_keys: u64,
}

/// What [`prune`] would delete, counted.
pub async fn count(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Pruned, StoreError> {
    let (emails, attempts, webhook_events, schedule_runs, keys): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM emails WHERE id < $1 AND status = ANY($2) AND updated_at < $3),
                (SELECT count(*) FROM email_attempts a JOIN emails e ON e.id = a.email_id
                  WHERE e.id < $1 AND e.status = ANY($2) AND e.updated_at < $3),
                (SELECT count(*) FROM webhook_events WHERE received_at < $3),
                (SELECT count(*) FROM schedule_runs WHERE tick < $3 AND status <> 'fanning_out'),
                (SELECT count(*) FROM idempotency_keys WHERE expires_at < now())",
    )
    .bind(v7_floor(cutoff))
    .bind(&Status::FINAL[..])
    .bind(cutoff)
    .fetch_one(pool)
    .await
    .map_err(q("counting prunable rows"))?;
    Ok(Pruned {
        emails: emails as u64,
        attempts: attempts as u64,
        webhook_events: webhook_events as u64,
        schedule_runs: schedule_runs as u64,
        idempotency_keys: keys as u64,
    })
}

/// Delete everything before `cutoff` that retention allows, `batch` emails per transaction
/// (short transactions: the workers keep writing meanwhile).
pub async fn prune(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<Pruned, StoreError> {
    let floor = v7_floor(cutoff);
    let mut out = Pruned::default();
    loop {
        let (emails, attempts): (i64, i64) = sqlx::query_as(
            "WITH victims AS (
                SELECT id FROM emails
                 WHERE id < $1 AND status = ANY($2) AND updated_at < $3
                 ORDER BY id LIMIT $4
             ), gone_attempts AS (
                DELETE FROM email_attempts a USING victims v WHERE a.email_id = v.id RETURNING 1
             ), gone AS (
                DELETE FROM emails e USING victims v WHERE e.id = v.id RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_attempts)",
        )
        .bind(floor)
        .bind(&Status::FINAL[..])
        .bind(cutoff)
        .bind(batch.max(1))
        .fetch_one(pool)
        .await
        .map_err(q("pruning emails"))?;
        out.emails += emails as u64;
        out.attempts += attempts as u64;
        if emails < batch.max(1) {
            break;
        }
    }
    out.webhook_events = sqlx::query("DELETE FROM webhook_events WHERE received_at < $1")
        .bind(cutoff)
        .execute(pool)
        .await
        .map_err(q("pruning webhook events"))?
        .rows_affected();
    out.schedule_runs =
        sqlx::query("DELETE FROM schedule_runs WHERE tick < $1 AND status <> 'fanning_out'")
            .bind(cutoff)
            .execute(pool)
            .await
            .map_err(q("pruning schedule runs"))?
            .rows_affected();
    out.idempotency_keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .execute(pool)
        .await
        .map_err(q("pruning idempotency keys"))?
        .rows_affected();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v7_floor_sorts_below_every_id_of_its_millisecond_and_above_earlier_ones() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let floor = v7_floor(t);
        let same = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_000,
            123_000_000,
        ));
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_000,
            122_000_000,
        ));
        assert!(floor <= same);
        assert!(before < floor);
    }
}
