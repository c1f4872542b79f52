//! The dead-letter streams, for operators: find entries by filter, replay them onto their lanes
//! (`lua/dlq_replay.lua`), purge them. The CLI is `mailfleet dlq list|show|replay|purge`.
//!
//! A replayed job keeps its id, payload and enqueue time. Its Postgres row, if `dead`, goes back
//! to `queued` with a fresh attempt budget before the entry reappears, so the claim lets it send;
//! a row already final otherwise (`sent`, `failed`, `unknown`, `suppressed`) is never replayed,
//! since the worker would only ack it. Each replay raises the job's `replays` count, and an entry
//! at `max_replays` is refused, so nothing circulates between the lanes and the dead stream.

use crate::domain::{Lane, Status};
use crate::scripts::{self, DLQ_REPLAY};
use crate::store::{self, StoreError};
use crate::stream::Keys;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use serde::Serialize;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("Redis failed while {doing}: {source}")]
    Redis {
        doing: &'static str,
        source: redis::RedisError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "invalid time {0:?}: use RFC 3339 (2026-11-23T10:00:00Z) or an age like 90s, 15m, 2h, 7d"
    )]
    BadTime(String),
}

fn redis_err(doing: &'static str) -> impl FnOnce(redis::RedisError) -> DlqError {
    move |source| DlqError::Redis { doing, source }
}

/// One dead-letter entry, decoded for display and filtering.
#[derive(Debug, Clone, Serialize)]
pub struct DeadEntry {
    pub partition: u16,
    /// The entry's id in the dead stream.
    pub dead_id: String,
    /// When it was dead-lettered (from the entry id).
    pub dead_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub class: String,
    pub error: String,
    pub attempts: String,
    pub lane: String,
    /// The job id it carried, if it had a readable one.
    pub job_id: Option<String>,
    /// How often the job was replayed before.
    pub replays: u32,
    /// Every field, as text (lossy for non-UTF-8 bytes); `show` prints them.
    #[serde(skip)]
    pub fields: Vec<(String, String)>,
}

impl DeadEntry {
    fn of(partition: u16, dead_id: String, fields: Vec<(String, String)>) -> Self {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let dead_at =
            crate::stream::wire::entry_ms(&dead_id).and_then(DateTime::from_timestamp_millis);
        let job_id = Some(get("orig_id")).filter(|s| !s.is_empty());
        DeadEntry {
            partition,
            dead_at,
            reason: get("reason"),
            class: get("class"),
            error: get("error"),
            attempts: get("attempts"),
            lane: get("lane"),
            replays: get("orig_replays").parse().unwrap_or(0),
            job_id,
            dead_id,
            fields,
        }
    }
}

/// Which entries an operation applies to; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub class: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub job_id: Option<String>,
    pub dead_id: Option<String>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, e: &DeadEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == e.reason)
            && self.class.as_ref().is_none_or(|c| *c == e.class)
            && self
                .job_id
                .as_ref()
                .is_none_or(|j| e.job_id.as_ref() == Some(j))
            && self.dead_id.as_ref().is_none_or(|d| *d == e.dead_id)
    }
}

/// Parse `--since`/`--until`: an RFC 3339 time, or an age (`90s`, `15m`, `2h`, `7d`) before `now`.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, DlqError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || DlqError::BadTime(s.to_owned());
    let secs = crate::domain::parse_span(s).ok_or_else(bad)?;
    now.checked_sub_signed(chrono::Duration::seconds(secs))
        .ok_or_else(bad)
}

const PAGE: usize = 500;

/// A dead-stream entry of partition `p`, its fields as text (lossy for non-UTF-8 bytes).
fn entry(p: u16, e: redis::streams::StreamId) -> DeadEntry {
    let fields = e
        .map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            };
            (k, text)
        })
        .collect();
    DeadEntry::of(p, e.id, fields)
}

/// Every dead entry of every partition that `filter` matches, oldest first per partition.
pub async fn scan<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    filter: &Filter,
) -> Result<Vec<DeadEntry>, DlqError> {
    let start = filter
        .since
        .map(|t| t.timestamp_millis().max(0).to_string())
        .unwrap_or_else(|| "-".into());
    let end = filter
        .until
        .map(|t| t.timestamp_millis().max(0).to_string())
        .unwrap_or_else(|| "+".into());
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for p in 0..keys.partitions() {
        let key = keys.dead(p);
        let mut from = start.clone();
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg(&end)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(conn)
                .await
                .map_err(redis_err("reading the dead-letter stream"))?;
            let n = page.ids.len();
            for e in page.ids {
                from = format!("({}", e.id);
                let d = entry(p, e);
                if filter.matches(&d) {
                    out.push(d);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
    }
    Ok(out)
}

/// The dead entry `dead_id` of `partition`, if it is still there.
pub async fn get<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    partition: u16,
    dead_id: &str,
) -> Result<Option<DeadEntry>, DlqError> {
    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.dead(partition))
        .arg(dead_id)
        .arg(dead_id)
        .query_async(conn)
        .await
        .map_err(redis_err("reading the dead-letter stream"))?;
    Ok(page.ids.into_iter().next().map(|e| entry(partition, e)))
}

/// The newest `n` dead entries over every partition, newest first (for the admin page).
pub async fn latest<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    n: usize,
) -> Result<Vec<DeadEntry>, DlqError> {
    let mut out = Vec::new();
    for p in 0..keys.partitions() {
        let page: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(keys.dead(p))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n)
            .query_async(conn)
            .await
            .map_err(redis_err("reading the dead-letter stream"))?;
        for e in page.ids {
            out.push(entry(p, e));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.dead_at));
    out.truncate(n);
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: u64,
    /// Left dead: replayed `max_replays` times already, or without a lane or fields to replay.
    pub refused: u64,
    /// Left dead: the job is final in Postgres (`sent`, `failed`, `unknown`, `suppressed`).
    pub already_final: u64,
    /// Gone before the replay reached them (replayed or purged meanwhile).
    pub missing: u64,
}

/// Replay `entries` at no more than `per_sec` entries a second.
pub async fn replay<C: ConnectionLike + Send>(
    conn: &mut C,
    pg: &PgPool,
    keys: &Keys,
    entries: &[DeadEntry],
    max_replays: u32,
    per_sec: u32,
) -> Result<Replayed, DlqError> {
    let per_sec = per_sec.max(1) as usize;
    let chunk = per_sec.min(200);
    let started = Instant::now();
    let mut done = 0usize;
    let mut total = Replayed::default();
    for batch in entries.chunks(chunk) {
        // Pace: the n-th entry goes out no earlier than n / per_sec seconds after the start.
        let due = Duration::from_secs_f64(done as f64 / per_sec as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        done += batch.len();
        let r = replay_batch(conn, pg, keys, batch, max_replays).await?;
        total.replayed += r.replayed;
        total.refused += r.refused;
        total.already_final += r.already_final;
        total.missing += r.missing;
    }
    Ok(total)
}

async fn replay_batch<C: ConnectionLike + Send>(
    conn: &mut C,
    pg: &PgPool,
    keys: &Keys,
    batch: &[DeadEntry],
    max_replays: u32,
) -> Result<Replayed, DlqError> {
    let mut r = Replayed::default();
    let ids: Vec<Uuid> = batch
        .iter()
        .filter_map(|e| e.job_id.as_deref()?.parse().ok())
        .collect();
    let final_ids = store::emails::ids_with_status(
        pg,
        &ids,
        &[
            Status::Sent,
            Status::Failed,
            Status::Unknown,
            Status::Suppressed,
            Status::Cancelled,
        ],
    )
    .await?;
    let mut eligible = Vec::new();
    for e in batch {
        let id: Option<Uuid> = e.job_id.as_deref().and_then(|s| s.parse().ok());
        if id.is_some_and(|id| final_ids.contains(&id)) {
            r.already_final += 1;
        } else if e.replays >= max_replays || e.lane.parse::<Lane>().is_err() {
            r.refused += 1;
        } else {
            eligible.push((e, id));
        }
    }
    // The row first: once the entry is back on its lane a worker may claim it at once, and a
    // `dead` row would make it ack without sending.
    let revive: Vec<Uuid> = eligible.iter().filter_map(|(_, id)| *id).collect();
    store::emails::revive_dead(pg, &revive).await?;
    let mut cmds = Vec::new();
    for p in 0..keys.partitions() {
        let mine: Vec<&str> = eligible
            .iter()
            .filter(|(e, _)| e.partition == p)
            .map(|(e, _)| e.dead_id.as_str())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut c = DLQ_REPLAY.call(&[
            &keys.dead(p),
            &keys.lane(p, Lane::Tx),
            &keys.lane(p, Lane::Bulk),
            &keys.delayed_of(p, Lane::Bulk),
        ]);
        c.arg(max_replays).arg(mine);
        cmds.push(c);
    }
    for res in scripts::run_pipeline(conn, cmds)
        .await
        .map_err(redis_err("replaying dead letters"))?
    {
        let v = res.map_err(redis_err("replaying dead letters"))?;
        if let redis::Value::Array(items) = v
            && let [
                redis::Value::Int(a),
                redis::Value::Int(b),
                redis::Value::Int(c),
            ] = items.as_slice()
        {
            r.replayed += *a as u64;
            r.refused += *b as u64;
            r.missing += *c as u64;
        }
    }
    Ok(r)
}

/// How many entries the dead-letter streams of every partition hold.
pub async fn count<C: ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> Result<u64, DlqError> {
    let mut p = redis::pipe();
    for part in 0..keys.partitions() {
        p.cmd("XLEN").arg(keys.dead(part));
    }
    let lens: Vec<u64> = p
        .query_async(conn)
        .await
        .map_err(redis_err("counting dead letters"))?;
    Ok(lens.iter().sum())
}

/// Delete `entries` from their dead streams; returns how many were deleted.
pub async fn purge<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    entries: &[DeadEntry],
) -> Result<u64, DlqError> {
    let mut deleted = 0;
    for p in 0..keys.partitions() {
        let ids: Vec<&str> = entries
            .iter()
            .filter(|e| e.partition == p)
            .map(|e| e.dead_id.as_str())
            .collect();
        for chunk in ids.chunks(PAGE) {
            let n: u64 = redis::cmd("XDEL")
                .arg(keys.dead(p))
                .arg(chunk)
                .query_async(conn)
                .await
                .map_err(redis_err("purging dead letters"))?;
            deleted += n;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2h", now).unwrap().to_rfc3339(),
            "2026-11-23T10:00:00+00:00"
        );
        assert_eq!(
            parse_time("7d", now).unwrap().to_rfc3339(),
            "2026-11-16T12:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        for bad in ["", "h", "5w", "-", "99999999999999999d", "yesterday"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_dead_entry_reads_its_fields_and_time() {
        let e = DeadEntry::of(
            2,
            "1763900000000-0".into(),
            vec![
                ("reason".into(), "max_attempts".into()),
                ("class".into(), "transient".into()),
                ("lane".into(), "tx".into()),
                (
                    "orig_id".into(),
                    "0190a1b2-0000-7000-8000-000000000000".into(),
                ),
                ("orig_replays".into(), "2".into()),
            ],
        );
        assert_eq!(e.replays, 2);
        assert_eq!(
            e.job_id.as_deref(),
            Some("0190a1b2-0000-7000-8000-000000000000")
        );
        assert_eq!(e.dead_at.unwrap().timestamp_millis(), 1_763_900_000_000);
        let f = Filter {
            reason: Some("max_attempts".into()),
            class: Some("transient".into()),
            ..Default::default()
        };
        assert!(f.matches(&e));
        let f = Filter {
            class: Some("malformed".into()),
            ..Default::default()
        };
        assert!(!f.matches(&e));
    }
}
