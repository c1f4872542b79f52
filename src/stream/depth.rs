//! How deep the queues are, in one pipelined round trip: per lane the stream length, the
//! entries pending (read, not acked), the consumer group's lag (entries not yet read) and the
//! age of the oldest pending entry; the delayed set; the dead-letter streams; and the workers
//! that reported in lately (with their providers' breaker states); and the tenants of the fair
//! bulk read (`lua/tenants.lua`, one call per partition in a second round trip): how many have
//! work, the busiest ones, and the fairness spread. Tenant streams count in the bulk lane's
//! length, lag and pending.
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

/// One tenant's bulk, summed over partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantDepth {
    pub tenant: String,
    /// Entries not yet read.
    pub waiting: u64,
    /// Entries read and not yet acked.
    pub in_flight: u64,
    /// Age of the oldest entry not yet read, in ms (from its id's time).
    pub oldest_waiting_ms: u64,
}

/// The fair bulk read's tenants, summed over partitions.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Tenants {
    /// Tenants with a stream (entries waiting or in flight), counted once per partition.
    pub active: u64,
    pub waiting: u64,
    pub in_flight: u64,
    /// Whether every active tenant was summed (a partition with more than the cap,
    /// [`TENANTS_LOOKED`] or a worker's [`TENANTS_SAMPLED`], is summed over its least and
    /// most served).
    pub complete: bool,
    /// The largest gap, in emails per unit of weight, between the most and the least served
    /// tenants with entries waiting in one partition: how far service has drifted from equal
    /// shares (a quantum or two is the normal granularity; growth means starvation).
    pub spread: f64,
    /// The busiest tenants by entries waiting, most first, at most [`BUSIEST`].
    pub busiest: Vec<TenantDepth>,
}

/// How many of the busiest tenants a depth read reports.
pub const BUSIEST: usize = 10;
/// The most ring members summed per partition in one depth read for a person (`mailfleet
/// status`, /admin)...
pub const TENANTS_LOOKED: usize = 10_000;
/// ...and in a worker's own read every few seconds: the least and the most served 16, enough
/// for the fairness spread, cheap enough that 100,000 tenants cost no noticeable Redis time.
pub const TENANTS_SAMPLED: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Depth {
    pub lanes: BTreeMap<&'static str, LaneDepth>,
    pub delayed: u64,
    pub dead: u64,
    /// Workers that reported within the liveness window, with when (unix ms).
    pub workers: Vec<(String, i64)>,
    /// What each live worker said of itself at its last report.
    pub worker_info: BTreeMap<String, WorkerInfo>,
    /// `provider -> (consumer -> breaker state)`, from live workers only (0 closed,
    /// 1 half-open, 2 open).
    pub breakers: BTreeMap<String, BTreeMap<String, i64>>,
    /// Pauses in force: `scope:name` -> unix ms since.
    pub paused: BTreeMap<String, i64>,
    pub tenants: Tenants,
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

/// What a worker says of itself when it reports alive.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerInfo {
    pub version: String,
    /// When the process started, unix ms.
    pub started_ms: i64,
    /// Entries it has read and not finished, both lanes.
    pub in_flight: i64,
}

impl WorkerInfo {
    fn encode(&self) -> String {
        format!("{}\t{}\t{}", self.version, self.started_ms, self.in_flight)
    }

    fn decode(s: &str) -> Option<WorkerInfo> {
        let mut it = s.split('\t');
        Some(WorkerInfo {
            version: it.next()?.to_owned(),
            started_ms: it.next()?.parse().ok()?,
            in_flight: it.next()?.parse().ok()?,
        })
    }
}

/// The worker reporting itself alive in a depth read.
pub struct Me<'a> {
    pub consumer: &'a str,
    /// Its providers' breaker states.
    pub breakers: &'a [(String, i64)],
    pub info: WorkerInfo,
}

/// Read every depth in one pipeline. With `me`, also report this worker alive (its breakers'
/// states and what it says of itself) in the same round trip.
pub async fn read<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: Option<Me<'_>>,
) -> redis::RedisResult<Depth> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut p = redis::pipe();
    let sampled = me.is_some();
    if let Some(Me {
        consumer,
        breakers,
        info,
    }) = &me
    {
        p.cmd("ZADD")
            .arg(keys.workers())
            .arg(now_ms)
            .arg(*consumer)
            .ignore();
        p.cmd("HSET")
            .arg(keys.worker_info())
            .arg(*consumer)
            .arg(info.encode())
            .ignore();
        for (provider, state) in breakers.iter() {
            p.cmd("HSET")
                .arg(keys.breakers())
                .arg(format!("{provider}\t{consumer}"))
                .arg(*state)
                .ignore();
        }
    }
    p.cmd("HGETALL").arg(keys.worker_info());
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
    let info_reply = it.next();
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
    let mut stale_info = Vec::new();
    if let Some(Value::Array(h)) = info_reply {
        for pair in h.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(v)] = pair {
                let name = String::from_utf8_lossy(name).into_owned();
                if !alive.contains(name.as_str()) {
                    stale_info.push(name);
                } else if let Some(i) = WorkerInfo::decode(&String::from_utf8_lossy(v)) {
                    d.worker_info.insert(name, i);
                }
            }
        }
    }
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
    let cap = if sampled {
        TENANTS_SAMPLED
    } else {
        TENANTS_LOOKED
    };
    read_tenants(conn, keys, now_ms, cap, &mut d).await?;
    if !stale_info.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("HDEL")
            .arg(keys.worker_info())
            .arg(stale_info)
            .query_async(conn)
            .await;
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

/// The tenants of every partition's ring (lua/tenants.lua), folded into `d`.
async fn read_tenants<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    now_ms: i64,
    cap: usize,
    d: &mut Depth,
) -> redis::RedisResult<()> {
    let cmds = (0..keys.partitions())
        .map(|p| {
            let mut c = crate::scripts::TENANTS.call(&[&keys.bulk_ring(p)]);
            c.arg(GROUP)
                .arg(keys.tenant_stream_prefix(p))
                .arg(BUSIEST)
                .arg(cap);
            c
        })
        .collect();
    let mut busiest: BTreeMap<String, TenantDepth> = BTreeMap::new();
    let t = &mut d.tenants;
    t.complete = true;
    for r in crate::scripts::run_pipeline(conn, cmds).await? {
        let Value::Array(v) = r? else { continue };
        let [active, waiting, in_flight, looked, spread, rows] = v.as_slice() else {
            continue;
        };
        let active = int(active);
        t.active += active;
        t.waiting += int(waiting);
        t.in_flight += int(in_flight);
        t.complete &= int(looked) >= active;
        let spread = match spread {
            Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
            _ => 0.0,
        };
        t.spread = t.spread.max(spread);
        if let Value::Array(rows) = rows {
            for row in rows.chunks_exact(4) {
                let Value::BulkString(name) = &row[0] else {
                    continue;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                let e = busiest.entry(name.clone()).or_insert_with(|| TenantDepth {
                    tenant: name,
                    ..Default::default()
                });
                e.waiting += int(&row[1]);
                e.in_flight += int(&row[2]);
                if let Value::BulkString(id) = &row[3]
                    && let Some(at) = std::str::from_utf8(id).ok().and_then(super::wire::entry_ms)
                {
                    e.oldest_waiting_ms = e.oldest_waiting_ms.max((now_ms - at).max(0) as u64);
                }
            }
        }
    }
    let mut busiest: Vec<TenantDepth> = busiest.into_values().collect();
    busiest.sort_by(|a, b| b.waiting.cmp(&a.waiting).then(a.tenant.cmp(&b.tenant)));
    busiest.truncate(BUSIEST);
    t.busiest = busiest;
    // Tenant streams are bulk: their entries count in the lane's figures.
    let bulk = d.lanes.entry(Lane::Bulk.as_str()).or_default();
    bulk.length += t.waiting + t.in_flight;
    bulk.lag += t.waiting;
    bulk.pending += t.in_flight;
    Ok(())
}
