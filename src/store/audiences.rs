//! Audiences and their members: who a recurring schedule sends to, with per-member template
//! variables and a subscribed flag. Fan-out reads members in id order with a keyset cursor
//! ([`members_after`]), so no list is ever held in memory whole.

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Audience {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AudienceSummary {
    pub name: String,
    pub members: i64,
    pub subscribed: i64,
    pub created_at: DateTime<Utc>,
}

/// A member to import. `email` must already be a validated address.
#[derive(Clone)]
pub struct NewMember {
    pub email: String,
    pub vars: serde_json::Value,
    pub subscribed: bool,
}

// Members are addresses: Debug shows none.
impl std::fmt::Debug for NewMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMember")
            .field("subscribed", &self.subscribed)
            .finish_non_exhaustive()
    }
}

/// A member as fan-out reads it.
#[derive(Clone, sqlx::FromRow)]
pub struct Member {
    pub id: i64,
    pub email: String,
    pub vars: serde_json::Value,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What `rm` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Removed,
    Missing,
    /// Schedules still send to it; remove or change them first.
    InUse(Vec<String>),
}

pub async fn create(pool: &PgPool, name: &str) -> Result<Option<Audience>, StoreError> {
    sqlx::query_as(
        "INSERT INTO audiences (name) VALUES ($1) ON CONFLICT (name) DO NOTHING
         RETURNING id, name, created_at",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(q("creating an audience"))
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Audience>, StoreError> {
    sqlx::query_as("SELECT id, name, created_at FROM audiences WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(q("loading an audience"))
}

pub async fn list(pool: &PgPool) -> Result<Vec<AudienceSummary>, StoreError> {
    sqlx::query_as(
        "SELECT a.name, count(m.id) AS members, count(m.id) FILTER (WHERE m.subscribed) AS subscribed,
                a.created_at
           FROM audiences a LEFT JOIN audience_members m ON m.audience_id = a.id
          GROUP BY a.id ORDER BY a.name",
    )
    .fetch_all(pool)
    .await
    .map_err(q("listing audiences"))
}

pub async fn remove(pool: &PgPool, name: &str) -> Result<Removed, StoreError> {
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT s.name FROM schedules s JOIN audiences a ON a.id = s.audience_id
          WHERE a.name = $1 ORDER BY s.name",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(q("checking an audience's schedules"))?;
    if !users.is_empty() {
        return Ok(Removed::InUse(users));
    }
    let n = sqlx::query("DELETE FROM audiences WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(|e| match &e {
            // 23503: a schedule was added between the check and the delete.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => StoreError::Query {
                doing: "removing an audience (a schedule now uses it)",
                source: e,
            },
            _ => StoreError::Query {
                doing: "removing an audience",
                source: e,
            },
        })?
        .rows_affected();
    Ok(if n == 1 {
        Removed::Removed
    } else {
        Removed::Missing
    })
}

/// Insert or update members (by address): vars and the subscribed flag are replaced. Returns
/// how many rows were written. Runs inside the caller's transaction, so an import is all or
/// nothing.
pub async fn upsert_members(
    conn: &mut PgConnection,
    audience_id: i64,
    members: &[NewMember],
) -> Result<u64, StoreError> {
    if members.is_empty() {
        return Ok(0);
    }
    let emails: Vec<&str> = members.iter().map(|m| m.email.as_str()).collect();
    let vars: Vec<&serde_json::Value> = members.iter().map(|m| &m.vars).collect();
    let subscribed: Vec<bool> = members.iter().map(|m| m.subscribed).collect();
    let r = sqlx::query(
        "INSERT INTO audience_members AS m (audience_id, email, vars, subscribed)
         SELECT $1, e, v, s FROM UNNEST($2::text[], $3::jsonb[], $4::bool[]) AS t(e, v, s)
         ON CONFLICT (audience_id, email) DO UPDATE
            SET vars = EXCLUDED.vars, subscribed = EXCLUDED.subscribed, updated_at = now()",
    )
    .bind(audience_id)
    .bind(&emails)
    .bind(&vars)
    .bind(&subscribed)
    .execute(conn)
    .await
    .map_err(q("importing audience members"))?;
    Ok(r.rows_affected())
}

/// Up to `limit` subscribed members with an id above `after`, in id order.
pub async fn members_after(
    conn: &mut PgConnection,
    audience_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<Member>, StoreError> {
    sqlx::query_as(
        "SELECT id, email, vars FROM audience_members
          WHERE audience_id = $1 AND subscribed AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(audience_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(q("reading audience members"))
}

/// Ids of the members in `(after, through]`, subscribed or not: the ones whose job a fan-out
/// may have committed there.
pub async fn member_ids_between(
    pool: &PgPool,
    audience_id: i64,
    after: i64,
    through: i64,
) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar(
        "SELECT id FROM audience_members WHERE audience_id = $1 AND id > $2 AND id <= $3 ORDER BY id",
    )
    .bind(audience_id)
    .bind(after)
    .bind(through)
    .fetch_all(pool)
    .await
    .map_err(q("reading audience member ids"))
}

/// Add `n` synthetic members (`member<i>@example.com`, each with a `name` var): for benchmarks
/// and load tests, one statement.
pub async fn fill_synthetic(pool: &PgPool, audience_id: i64, n: i64) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "INSERT INTO audience_members (audience_id, email, vars)
         SELECT $1, 'member' || g || '@example.com', jsonb_build_object('name', 'Member ' || g)
           FROM generate_series(1, $2) g
         ON CONFLICT (audience_id, email) DO NOTHING",
    )
    .bind(audience_id)
    .bind(n)
    .execute(pool)
    .await
    .map_err(q("adding synthetic members"))?;
    Ok(r.rows_affected())
}

/// Unsubscribe `address` (lowercased) from the audience of schedule `schedule_id`; the number
/// of member rows changed (0 when it was not a subscribed member).
pub async fn unsubscribe_from_schedule(
    pool: &PgPool,
    schedule_id: i64,
    address: &str,
) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "UPDATE audience_members SET subscribed = false, updated_at = now()
          WHERE audience_id = (SELECT audience_id FROM schedules WHERE id = $1)
            AND lower(email) = $2 AND subscribed",
    )
    .bind(schedule_id)
    .bind(address)
    .execute(pool)
    .await
    .map_err(q("unsubscribing an audience member"))?;
    Ok(r.rows_affected())
}
