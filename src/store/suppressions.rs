//! The `suppressions` table: addresses not to send to, by reason, optionally per tenant and
//! until an expiry. Addresses are stored lowercased whole (local part included), so a lookup
//! is an index probe on the primary key.

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;

pub const REASONS: [&str; 4] = ["bounce", "complaint", "unsubscribe", "manual"];

/// One suppression. Its Debug shows the domain only: rows end up in logs.
#[derive(Clone, Serialize, sqlx::FromRow)]
pub struct Suppression {
    pub address: String,
    /// '' for every tenant.
    pub tenant: String,
    pub reason: String,
    pub note: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppression")
            .field(
                "domain",
                &self.address.rsplit_once('@').map_or("", |(_, d)| d),
            )
            .field("tenant", &self.tenant)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Add or replace suppressions (the newest reason, note and expiry win). Returns how many rows
/// were written.
pub async fn add(pool: &PgPool, rows: &[Suppression]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let address: Vec<String> = rows.iter().map(|r| r.address.to_lowercase()).collect();
    let tenant: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let reason: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    let note: Vec<Option<&str>> = rows.iter().map(|r| r.note.as_deref()).collect();
    let expires: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.expires_at).collect();
    let r = sqlx::query(
        "INSERT INTO suppressions (address, tenant, reason, note, expires_at)
         SELECT DISTINCT ON (address, tenant) address, tenant, reason, note, expires_at
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                AS t(address, tenant, reason, note, expires_at)
         ON CONFLICT (address, tenant) DO UPDATE
            SET reason = EXCLUDED.reason, note = EXCLUDED.note,
                expires_at = EXCLUDED.expires_at, created_at = now()",
    )
    .bind(&address)
    .bind(&tenant)
    .bind(&reason)
    .bind(&note)
    .bind(&expires)
    .execute(pool)
    .await
    .map_err(q("adding suppressions"))?;
    Ok(r.rows_affected())
}

/// Remove an address's suppression for `tenant` ('' for the every-tenant row).
pub async fn remove(pool: &PgPool, address: &str, tenant: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM suppressions WHERE address = $1 AND tenant = $2")
        .bind(address.to_lowercase())
        .bind(tenant)
        .execute(pool)
        .await
        .map_err(q("removing a suppression"))?;
    Ok(r.rows_affected() > 0)
}

/// Suppressions, newest first, optionally of one tenant and reason.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&str>,
    reason: Option<&str>,
    limit: i64,
) -> Result<Vec<Suppression>, StoreError> {
    sqlx::query_as(
        "SELECT address, tenant, reason, note, expires_at, created_at FROM suppressions
          WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR reason = $2)
          ORDER BY created_at DESC, address LIMIT $3",
    )
    .bind(tenant)
    .bind(reason)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(q("listing suppressions"))
}

/// Suppressed (address, tenant) pairs; a tenant of '' suppresses the address for everyone.
pub type Active = HashSet<(String, String)>;

/// Which of `addresses` (lowercased) are suppressed now.
pub async fn active(pool: &PgPool, addresses: &[String]) -> Result<Active, StoreError> {
    if addresses.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT address, tenant FROM suppressions
          WHERE address = ANY($1) AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(addresses)
    .fetch_all(pool)
    .await
    .map_err(q("checking suppressions"))?;
    Ok(rows.into_iter().collect())
}

/// Whether `address` (lowercased) is suppressed for `tenant` given the [`active`] pairs.
pub fn is_suppressed(set: &Active, address: &str, tenant: Option<&str>) -> bool {
    set.contains(&(address.to_owned(), String::new()))
        || tenant.is_some_and(|t| set.contains(&(address.to_owned(), t.to_owned())))
}
