//! The cluster at a glance, read from Redis and Postgres (not from any one worker): lanes
//! (length, pending, lag, oldest pending), delayed, dead letters, workers alive, pauses,
//! the scheduler's leader and fence, each provider's breaker as every live worker last
//! reported it, the outcomes recorded per lane over the last minute, and per status today and
//! over every row kept.
//!
//! `mailfleet status` prints it; the admin page (`api::admin`) renders it.

use crate::lease::{self, LeaseKeys};
use crate::store::{self, StoreError};
use crate::stream::{self, depth};
use std::collections::BTreeMap;
use std::time::Duration;

/// The window `recent` is measured over, in seconds.
pub const RATE_WINDOW_SECS: f64 = 60.0;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no Redis connection: {0}")]
    Pool(#[from] crate::stream::PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub depth: depth::Depth,
    /// lane -> status -> count over the last [`RATE_WINDOW_SECS`].
    pub recent: BTreeMap<String, BTreeMap<String, i64>>,
    /// The scheduler lease's holder and its time left.
    pub lease: Option<(String, Duration)>,
    /// The fence's token and the holder that wrote it last.
    pub fence: (i64, Option<String>),
    /// Emails sent over the last [`RATE_WINDOW_SECS`] by each of the busiest tenants.
    pub tenant_sent: BTreeMap<String, i64>,
    /// status -> rows recorded in it today (UTC, by Postgres' clock) and every row kept.
    pub totals: BTreeMap<String, store::emails::Totals>,
}

pub async fn snapshot(
    pool: &crate::stream::Pool,
    pg: &sqlx::PgPool,
    keys: &stream::Keys,
) -> Result<Snapshot, SnapshotError> {
    let mut conn = pool.get().await?;
    let depth = depth::read(&mut *conn, keys, None).await?;
    let lease = lease::holder(&mut *conn, &LeaseKeys::new(keys.prefix(), lease::SCHEDULER)).await?;
    let fence = store::fence::read(pg, lease::SCHEDULER).await?;
    let mut recent: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut totals: BTreeMap<String, store::emails::Totals> = BTreeMap::new();
    for c in store::emails::outcome_counts(pg, RATE_WINDOW_SECS).await? {
        if c.recent > 0 {
            recent
                .entry(c.lane.clone())
                .or_default()
                .insert(c.status.clone(), c.recent);
        }
        let t = totals.entry(c.status).or_default();
        t.today += c.today;
        t.all += c.all;
    }
    let busiest: Vec<String> = depth
        .tenants
        .busiest
        .iter()
        .map(|t| t.tenant.clone())
        .collect();
    let tenant_sent = store::emails::recent_sent_by_tenant(pg, &busiest, RATE_WINDOW_SECS)
        .await?
        .into_iter()
        .collect();
    Ok(Snapshot {
        depth,
        recent,
        lease,
        fence,
        tenant_sent,
        totals,
    })
}

/// A breaker state as workers report it (0 closed, 1 half-open, 2 open).
pub fn breaker_name(state: i64) -> &'static str {
    match state {
        0 => "closed",
        1 => "half-open",
        _ => "open",
    }
}
