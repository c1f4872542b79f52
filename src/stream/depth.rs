//! How deep the queues are, in one pipelined round trip: per lane the stream length, the
//! entries pending (read, not acked), the consumer group's lag (entries not yet read) and the
//! age of the oldest pending entry; the delayed set; the dead-letter streams; and the workers
//! that reported in lately (with their providers' breaker states).
//!
//! Every worker runs this every few seconds (`worker::observe`) to publish gauges and its own
//! liveness; `mailfleet status` runs it once per refresh.

use super::{GROUP, Keys};
use crate::domain::Lane;
use redis::Value;
use std::collections::BTreeMap;

/// One lane, summed over partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaneDepth {
    pub length: u64,
    pub pending: u64,
    pub lag: u64,
    /// Entries the group has read since the stream began (trimming does not lower it).
    pub entries_read: u64,
    /// Age of the oldest pending entry, in ms (from its id's time), 0 when none is pending.
    pub oldest_pending_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Depth {
    pub lanes: BTreeMap<&'static str, LaneDepth>,
    pub delayed: u64,
    pub dead: u64,
    /// Workers that reported within the liveness window, with when (unix ms).
    pub workers: Vec<(String, i64)>,
    /// `provider -> (consumer -> breaker state)`, from live workers only (0 closed,
    /// 1 half-open, 2 open).
    pub breakers: BTreeMap<String, BTreeMap<String, i64>>,
    /// Pauses in force: `scope:name` -> unix ms since.
    pub paused: BTreeMap<String, i64>,
}

/// A worker is alive if it reported within this long.
pub const ALIVE_MS: i64 = 30_000;

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The `lag`, `pending` and `entries-read` of our group in an XINFO GROUPS reply (RESP2 flat
/// maps).
fn group_info(v: &Value) -> (u64, u64, u64) {
    let Value::Array(groups) = v else {
        return (0, 0, 0);
    };
    for g in groups {
        let fields: Vec<&Value> = match g {
            Value::Array(f) => f.iter().collect(),
            _ => continue,
        };
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| matches!(kv[0], Value::BulkString(b) if b == name.as_bytes()))
                .map(|kv| kv[1])
        };
        let is_ours = matches!(get("name"), Some(Value::BulkString(b)) if b == GROUP.as_bytes());
        if is_ours {
            // `lag` is nil when Redis cannot tell (after deletions); count it as unknown (0).
            return (
                get("lag").map_or(0, int),
                get("pending").map_or(0, int),
                get("entries-read").map_or(0, int),
            );
        }
    }
    (0, 0, 0)
}

/// The id's time of the oldest pending entry in an XPENDING summary reply.
fn oldest_pending_at(v: &Value) -> Option<i64> {
    let Value::Array(s) = v else { return None };
    let Value::BulkString(id) = s.get(1)? else {
        return None;
    };
    super::wire::entry_ms(std::str::from_utf8(id).ok()?)
}

/// Read every depth in one pipeline. With `me`, also report this worker alive (and its
/// providers' breaker states) in the same round trip.
pub async fn read<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: Option<(&str, &[(String, i64)])>,
) -> redis::RedisResult<Depth> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut p = redis::pipe();
    if let Some((consumer, breakers)) = me {
        p.cmd("ZADD")
            .arg(keys.workers())
            .arg(now_ms)
            .arg(consumer)
            .ignore();
        for (provider, state) in breakers {
            p.cmd("HSET")
                .arg(keys.breakers())
                .arg(format!("{provider}\t{consumer}"))
                .arg(*state)
                .ignore();
        }
    }
    p.cmd("ZREMRANGEBYSCORE")
        .arg(keys.workers())
        .arg("-inf")
        .arg(now_ms - ALIVE_MS)
        .ignore();
    p.cmd("ZRANGE")
        .arg(keys.workers())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES");
    p.cmd("HGETALL").arg(keys.breakers());
    p.cmd("HGETALL").arg(keys.paused());
    for part in 0..keys.partitions() {
        for lane in Lane::ALL {
            let k = keys.lane(part, lane);
            p.cmd("XLEN").arg(&k);
            p.cmd("XINFO").arg("GROUPS").arg(&k);
            p.cmd("XPENDING").arg(&k).arg(GROUP);
        }
        p.cmd("ZCARD").arg(keys.delayed(part));
        p.cmd("ZCARD").arg(keys.delayed_tx(part));
        p.cmd("XLEN").arg(keys.dead(part));
    }
    p.ignore_errors();
    let replies: Vec<redis::RedisResult<Value>> = p.query_async(conn).await?;
    let mut it = replies.into_iter().map(|r| r.unwrap_or(Value::Nil));
    let mut d = Depth::default();
    if let Some(Value::Array(w)) = it.next() {
        for pair in w.chunks(2) {
            if let [Value::BulkString(name), score] = pair {
                d.workers.push((
                    String::from_utf8_lossy(name).into_owned(),
                    int(score) as i64,
                ));
            }
        }
    }
    let alive: std::collections::HashSet<&str> =
        d.workers.iter().map(|(w, _)| w.as_str()).collect();
    let mut stale = Vec::new();
    if let Some(Value::Array(h)) = it.next() {
        for pair in h.chunks(2) {
            if let [Value::BulkString(field), v] = pair {
                let field = String::from_utf8_lossy(field).into_owned();
                let Some((provider, consumer)) = field.split_once('\t') else {
                    continue;
                };
                if alive.contains(consumer) {
                    d.breakers
                        .entry(provider.to_owned())
                        .or_default()
                        .insert(consumer.to_owned(), int(v) as i64);
                } else {
                    stale.push(field);
                }
            }
        }
    }
    if let Some(Value::Array(h)) = it.next() {
        for pair in h.chunks(2) {
            if let [Value::BulkString(field), since] = pair {
                d.paused.insert(
                    String::from_utf8_lossy(field).into_owned(),
                    int(since) as i64,
                );
            }
        }
    }
    for _ in 0..keys.partitions() {
        for lane in Lane::ALL {
            let length = int(&it.next().unwrap_or(Value::Nil));
            let (lag, pending, read) = group_info(&it.next().unwrap_or(Value::Nil));
            let oldest = oldest_pending_at(&it.next().unwrap_or(Value::Nil));
            let l = d.lanes.entry(lane.as_str()).or_default();
            l.length += length;
            l.lag += lag;
            l.pending += pending;
            l.entries_read += read;
            if let Some(at) = oldest {
                l.oldest_pending_ms = l.oldest_pending_ms.max((now_ms - at).max(0) as u64);
            }
        }
        // Both delayed sets: bulk's (and older producers'), then tx's.
        d.delayed += int(&it.next().unwrap_or(Value::Nil));
        d.delayed += int(&it.next().unwrap_or(Value::Nil));
        d.dead += int(&it.next().unwrap_or(Value::Nil));
    }
    if !stale.is_empty() {
        // Breaker states of workers that stopped reporting: drop them (best effort).
        let _: redis::RedisResult<()> = redis::cmd("HDEL")
            .arg(keys.breakers())
            .arg(stale)
            .query_async(conn)
            .await;
    }
    Ok(d)
}
