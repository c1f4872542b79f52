//! Named, versioned templates. A put creates a new version; senders use the latest.

use super::{StoreError, q};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct Template {
    pub name: String,
    pub version: i32,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Store a new version of `name`; returns it.
pub async fn put(
    pool: &PgPool,
    name: &str,
    subject: &str,
    html: Option<&str>,
    text: Option<&str>,
) -> Result<Template, StoreError> {
    // The (name, version) key makes two concurrent puts conflict instead of sharing a version.
    sqlx::query_as(
        "INSERT INTO templates (name, version, subject, html, text)
         SELECT $1, COALESCE(max(version), 0) + 1, $2, $3, $4 FROM templates WHERE name = $1
         RETURNING name, version, subject, html, text, created_at",
    )
    .bind(name)
    .bind(subject)
    .bind(html)
    .bind(text)
    .fetch_one(pool)
    .await
    .map_err(q("storing a template"))
}

/// The latest version of each named template that exists.
pub async fn latest(pool: &PgPool, names: &[String]) -> Result<Vec<Template>, StoreError> {
    sqlx::query_as(
        "SELECT DISTINCT ON (name) name, version, subject, html, text, created_at
           FROM templates WHERE name = ANY($1) ORDER BY name, version DESC",
    )
    .bind(names)
    .fetch_all(pool)
    .await
    .map_err(q("loading templates"))
}

pub async fn get(
    pool: &PgPool,
    name: &str,
    version: Option<i32>,
) -> Result<Option<Template>, StoreError> {
    sqlx::query_as(
        "SELECT name, version, subject, html, text, created_at FROM templates
          WHERE name = $1 AND ($2::int4 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await
    .map_err(q("loading a template"))
}

/// Latest version of every template.
pub async fn list(pool: &PgPool) -> Result<Vec<Template>, StoreError> {
    sqlx::query_as(
        "SELECT DISTINCT ON (name) name, version, subject, html, text, created_at
           FROM templates ORDER BY name, version DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(q("listing templates"))
}

/// How long ago (by Postgres' clock) the newest version of any of `names` was stored; None when
/// none of them exists.
pub async fn changed_ago(
    pool: &PgPool,
    names: &[String],
) -> Result<Option<std::time::Duration>, StoreError> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - max(created_at))::float8 FROM templates
          WHERE name = ANY($1)",
    )
    .bind(names)
    .fetch_one(pool)
    .await
    .map_err(q("reading when templates changed"))?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}
