//! Postgres, the system of record: the pool, the migration check, and every query.
//!
//! Architecture Invariant: only this module writes SQL. Hot-path writes are batched: one
//! statement claims a whole batch ([`emails::claim`]), one statement records a batch of
//! outcomes with their attempt rows ([`emails::record`]). Both are single statements, so each is
//! exactly one transaction and one round trip.

pub mod api_keys;
pub mod audiences;
pub mod bench;
pub mod emails;
pub mod fence;
pub mod retention;
pub mod schedules;
pub mod suppressions;
pub mod templates;
pub mod ticks;
pub mod webhooks;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach Postgres at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error(
        "the database at {target} is not migrated (missing: {missing}); run `mailfleet migrate`"
    )]
    NotMigrated { target: String, missing: String },
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Postgres query failed while {doing}: {source}")]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error("invalid database URL: {0}")]
    BadUrl(sqlx::Error),
    #[error("{0:?} is not a plain lowercase identifier")]
    BadName(String),
}

pub(crate) fn q(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { doing, source }
}

/// Host, port and database of a URL, without credentials: safe for errors and logs.
pub fn redacted_target(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    )
}

/// Open a pool. Statement logging is off: statements carry addresses.
/// Whether Postgres answers a trivial query (for `/readyz`).
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(q("checking the database"))
}

/// Postgres' clock: the one every due time and schedule tick is compared with, so a host whose
/// own clock is off cannot move them.
pub async fn now(pool: &PgPool) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .map_err(q("reading the database clock"))
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(StoreError::BadUrl)?
        .disable_statement_logging()
        .application_name("mailfleet"))
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let opts = connect_options(url)?;
    let target = redacted_target(&opts);
    pool_options(max_connections)
        .connect_with(opts)
        .await
        .map_err(|source| StoreError::Connect { target, source })
}

/// A pool that connects on first use: for a producer that may never write to Postgres.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

/// Every pool's options.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        // No ping on every checkout: it is a round trip per statement on the hot path, and a
        // dead connection fails its next statement anyway, which every caller handles.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
}

/// A second pool of up to `max_connections` to `pool`'s database, with the same options;
/// it connects on first use.
pub fn companion(pool: &PgPool, max_connections: u32) -> PgPool {
    pool_options(max_connections).connect_lazy_with((*pool.connect_options()).clone())
}

/// Fail with a clear message unless every migration this binary knows is applied.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), StoreError> {
    let target = redacted_target(&pool.connect_options());
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(v) => v,
        // 42P01: undefined_table, i.e. never migrated at all.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => return Err(q("checking migrations")(e)),
    };
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StoreError::NotMigrated {
            target,
            missing: missing.join(", "),
        })
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Database names are spliced into DDL (it takes no parameters): only `[a-z0-9_]` passes.
fn plain_identifier(name: &str) -> Result<(), StoreError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// Create a database next to the one `pool` is connected to (for `mailfleet bench`'s scratch
/// runs); `name` must be a plain identifier.
pub async fn create_database(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    plain_identifier(name)?;
    let sql = format!("CREATE DATABASE {name}");
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .map_err(q("creating a scratch database"))?;
    Ok(())
}

/// Drop a database made by [`create_database`], closing its connections first.
pub async fn drop_database(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    plain_identifier(name)?;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .map_err(q("dropping a scratch database"))?;
    Ok(())
}
