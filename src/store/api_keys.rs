//! The `api_keys` table: keys bound to a tenant and scopes, stored as SHA-256 hashes
//! (`mailfleet key create|list|revoke`; the API authenticates with [`find`]).

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// What a key may do.
pub const SCOPES: [&str; 2] = ["send", "read"];

/// One key as listed: never the key itself, only its first characters.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyRow {
    pub id: Uuid,
    pub prefix: String,
    pub name: String,
    /// None: every tenant (an operator's key).
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a presented key is allowed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Grant {
    pub id: Uuid,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
}

pub async fn create(
    pool: &PgPool,
    key_hash: &[u8; 32],
    prefix: &str,
    name: &str,
    tenant: Option<&str>,
    scopes: &[String],
) -> Result<KeyRow, StoreError> {
    sqlx::query_as(
        "INSERT INTO api_keys (id, key_hash, prefix, name, tenant, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, prefix, name, tenant, scopes, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(key_hash.as_slice())
    .bind(prefix)
    .bind(name)
    .bind(tenant)
    .bind(scopes)
    .fetch_one(pool)
    .await
    .map_err(q("creating an API key"))
}

pub async fn list(pool: &PgPool) -> Result<Vec<KeyRow>, StoreError> {
    sqlx::query_as(
        "SELECT id, prefix, name, tenant, scopes, created_at, revoked_at
           FROM api_keys ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .map_err(q("listing API keys"))
}

/// Revoke the key whose id or prefix is `which`; the number of keys revoked (0 or 1: a
/// prefix that names several keys revokes none).
pub async fn revoke(pool: &PgPool, which: &str) -> Result<u64, StoreError> {
    let id = Uuid::parse_str(which).ok();
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
          WHERE revoked_at IS NULL
            AND id = (SELECT (array_agg(id))[1] FROM api_keys
                       WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)
                      HAVING count(*) = 1)",
    )
    .bind(id)
    .bind(which)
    .execute(pool)
    .await
    .map_err(q("revoking an API key"))?;
    Ok(r.rows_affected())
}

/// The live key with this hash, if any.
pub async fn find(pool: &PgPool, key_hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
    sqlx::query_as(
        "SELECT id, tenant, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash.as_slice())
    .fetch_optional(pool)
    .await
    .map_err(q("looking up an API key"))
}
