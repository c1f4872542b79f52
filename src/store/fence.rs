//! The `leader_fence` table: the highest fencing token each lease has written with.
//!
//! [`advance`] is the first statement of every leader transaction (see `lease::fenced`): it
//! moves the fence to the caller's token unless a higher one is there already, and the row lock
//! it takes serializes leader transactions until commit.

use super::{StoreError, q};
use sqlx::{PgConnection, PgPool};

/// The fence's current token: the floor for the next acquisition. Zero for a lease never held.
pub async fn current(pool: &PgPool, name: &str) -> Result<i64, StoreError> {
    let t: Option<i64> = sqlx::query_scalar("SELECT token FROM leader_fence WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(q("reading the leader fence"))?;
    Ok(t.unwrap_or(0))
}

/// Move the fence to `token` unless a newer leader wrote first. False means the caller is
/// stale: it must roll back and step down.
///
/// This is `UPDATE leader_fence SET token = $t WHERE name = $n AND token <= $t`, with ties broken
/// by holder: a Redis that lost its counter can hand one token to two owners (the second one's
/// floor was read before the first one wrote), and then only the first to write it may use it.
pub async fn advance(
    conn: &mut PgConnection,
    name: &str,
    token: i64,
    holder: &str,
) -> Result<bool, StoreError> {
    // The upsert creates the row for a lease name the migration did not seed.
    let n = sqlx::query(
        "INSERT INTO leader_fence AS f (name, token, holder) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder,
                                          updated_at = now()
          WHERE f.token < EXCLUDED.token
             OR (f.token = EXCLUDED.token AND f.holder IS NOT DISTINCT FROM EXCLUDED.holder)",
    )
    .bind(name)
    .bind(token)
    .bind(holder)
    .execute(conn)
    .await
    .map_err(q("advancing the leader fence"))?
    .rows_affected();
    Ok(n == 1)
}

/// Bound how long this transaction may sit idle (its client paused or cut off) while it holds
/// the fence row's lock: Postgres ends the session after `ms`, so a frozen leader cannot keep its
/// successor waiting on the lock past the lease TTL.
pub async fn limit_idle(conn: &mut PgConnection, ms: u64) -> Result<(), StoreError> {
    // set_config(.., true) is SET LOCAL with a bind parameter.
    sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
        .bind(ms.max(1).to_string())
        .execute(conn)
        .await
        .map_err(q("limiting a leader transaction's idle time"))?;
    Ok(())
}

/// The fence row: (token, holder), for status and tests.
pub async fn holder(
    pool: &PgPool,
    name: &str,
) -> Result<Option<(i64, Option<String>)>, StoreError> {
    sqlx::query_as("SELECT token, holder FROM leader_fence WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(q("reading the leader fence"))
}

/// The fence's token and the holder that wrote it last (for `mailfleet status`).
pub async fn read(pool: &PgPool, name: &str) -> Result<(i64, Option<String>), StoreError> {
    let row: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT token, holder FROM leader_fence WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(q("reading the leader fence"))?;
    Ok(row.unwrap_or((0, None)))
}
