//! The consumer side of the streams: group setup, batched reads (tx strictly before bulk), and
//! the end-of-batch Redis writes (acks, retries, dead letters) as one pipeline.
//!
//! Reads: `lua/read.lua` fills a batch from tx first, then bulk, in one round trip; only when
//! both are empty does the reader block, on a dedicated connection whose response timeout is
//! off (redis 1.x times responses out after 500 ms by default, shorter than a BLOCK).

use super::{GROUP, Keys, RawEntry, Source, wire};
use crate::domain::Lane;
use crate::scripts::{
    self, DEAD_LETTER, PROMOTE, READ, RECLAIM, RECLAIM_DUE, RETRY, SETTLE, TOUCH, TRIM,
};
use redis::{RedisResult, Value, aio::ConnectionLike};
use std::collections::BTreeMap;

/// Create the consumer group on every lane stream of every partition (idempotent).
pub async fn ensure_groups<C: ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> RedisResult<()> {
    let mut cmds = Vec::new();
    let mut streams = Vec::new();
    for p in 0..keys.partitions() {
        for stream in [
            keys.lane(p, Lane::Tx),
            keys.lane(p, Lane::Bulk),
            keys.bulk_bell(p),
        ] {
            let mut c = redis::cmd("XGROUP");
            c.arg("CREATE")
                .arg(&stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM");
            cmds.push(c);
            streams.push(stream);
        }
    }
    let results = scripts::run_pipeline(&mut *conn, cmds).await?;
    for (stream, r) in streams.iter().zip(results) {
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            // At maxmemory Redis refuses XGROUP CREATE even for a group that exists. A stream
            // that has the group, or does not exist yet (enqueue.lua makes a stream with its
            // group), needs nothing: a worker can start and drain a full Redis.
            Err(e) if e.code() == Some("OOM") => {
                let info: RedisResult<redis::Value> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(stream)
                    .query_async(&mut *conn)
                    .await;
                match info {
                    Ok(v) if names_group(&v) => {}
                    Err(x) if x.to_string().contains("no such key") => {}
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an `XINFO GROUPS` answer lists [`GROUP`].
fn names_group(v: &redis::Value) -> bool {
    use redis::Value::*;
    match v {
        BulkString(b) => b.as_slice() == GROUP.as_bytes(),
        SimpleString(s) => s == GROUP,
        Array(items) | Set(items) => items.iter().any(names_group),
        Map(pairs) => pairs.iter().any(|(k, v)| names_group(k) || names_group(v)),
        _ => false,
    }
}

/// Entries one visit of the fair read takes from a tenant's bulk stream, times the tenant's
/// weight (lua/read.lua): small enough that 50 tenants share a batch, large enough that the
/// ring's bookkeeping is a fraction of a command per email.
pub const FAIR_QUANTUM: usize = 16;

/// Replace every partition's tenant weights (read by lua/read.lua) with `weights` (a read in
/// between sees every tenant at weight 1 for that moment); no weights leaves no hash, and the
/// read skips the look-ups.
pub async fn set_weights<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    weights: &[(String, u32)],
) -> RedisResult<()> {
    let mut cmds = Vec::new();
    for p in 0..keys.partitions() {
        let key = keys.bulk_weights(p);
        cmds.push({
            let mut c = redis::cmd("DEL");
            c.arg(&key);
            c
        });
        if !weights.is_empty() {
            let mut c = redis::cmd("HSET");
            c.arg(&key);
            for (t, w) in weights {
                c.arg(t).arg(*w);
            }
            cmds.push(c);
        }
    }
    for r in scripts::run_pipeline(conn, cmds).await? {
        r?;
    }
    Ok(())
}

/// Non-blocking read of up to `count` entries of partition `p`: tx first, then bulk fairly
/// across the tenants with a backlog (lua/read.lua).
pub async fn read_now<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    p: u16,
    consumer: &str,
    count: usize,
    paused: &[Lane],
) -> RedisResult<Vec<RawEntry>> {
    let mut cmd = READ.call(&[
        &keys.lane(p, Lane::Tx),
        &keys.lane(p, Lane::Bulk),
        &keys.bulk_ring(p),
        &keys.bulk_held(p),
        &keys.bulk_weights(p),
    ]);
    let open = |l| if paused.contains(&l) { "0" } else { "1" };
    cmd.arg(GROUP)
        .arg(consumer)
        .arg(count)
        .arg(open(Lane::Tx))
        .arg(open(Lane::Bulk))
        .arg(keys.tenant_stream_prefix(p))
        .arg(FAIR_QUANTUM);
    let v = scripts::run_one(conn, cmd).await?;
    let mut out = Vec::new();
    if let Value::Array(lanes) = v
        && let [t, b] = lanes.as_slice()
    {
        out.extend(wire::parse_entries(t, &Source::shared(p, Lane::Tx)));
        if let Value::Array(visits) = b {
            for visit in visits.chunks_exact(2) {
                let tenant = match &visit[0] {
                    Value::BulkString(t) if !t.is_empty() => {
                        Some(std::sync::Arc::from(String::from_utf8_lossy(t).as_ref()))
                    }
                    _ => None,
                };
                let source = Source {
                    partition: p,
                    lane: Lane::Bulk,
                    tenant,
                };
                out.extend(wire::parse_entries(&visit[1], &source));
            }
        }
    }
    Ok(out)
}

/// Blocking read on both lanes of partition `p`, for when [`read_now`] found nothing. Must run
/// on a connection without a response timeout.
pub async fn read_blocking<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    p: u16,
    consumer: &str,
    count: usize,
    block_ms: u64,
    paused: &[Lane],
) -> RedisResult<Vec<RawEntry>> {
    let tx = keys.lane(p, Lane::Tx);
    let bulk = keys.lane(p, Lane::Bulk);
    let bell = keys.bulk_bell(p);
    let mut open: Vec<&String> = [(Lane::Tx, &tx), (Lane::Bulk, &bulk)]
        .into_iter()
        .filter(|(l, _)| !paused.contains(l))
        .map(|(_, k)| k)
        .collect();
    // Tenant streams come and go, so a bulk read blocks on the ring's bell as well.
    if !paused.contains(&Lane::Bulk) {
        open.push(&bell);
    }
    if open.is_empty() {
        // Every lane paused: wait as a blocking read would, then let the caller look again.
        tokio::time::sleep(std::time::Duration::from_millis(block_ms)).await;
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(&open);
    for _ in &open {
        cmd.arg(">");
    }
    let v: Value = cmd.query_async(conn).await?;
    let mut out = Vec::new();
    // RESP2: [[key, entries], ...]; RESP3 would be a map of key -> entries.
    let streams: Vec<(Value, Value)> = match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let e = kv.pop()?;
                    Some((kv.pop()?, e))
                }
                _ => None,
            })
            .collect(),
        Value::Map(kv) => kv,
        _ => Vec::new(),
    };
    let mut rung = Vec::new();
    for (k, entries) in streams {
        let lane = match &k {
            Value::BulkString(b) if b.as_slice() == tx.as_bytes() => Lane::Tx,
            Value::BulkString(b) if b.as_slice() == bell.as_bytes() => {
                rung.extend(
                    wire::parse_entries(&entries, &Source::shared(p, Lane::Bulk))
                        .into_iter()
                        .map(|e| e.entry_id),
                );
                continue;
            }
            _ => Lane::Bulk,
        };
        out.extend(wire::parse_entries(&entries, &Source::shared(p, lane)));
    }
    // A ring: no job, only a wake-up; the caller's next read_now serves the new tenant.
    if !rung.is_empty() {
        redis::cmd("XACK")
            .arg(&bell)
            .arg(GROUP)
            .arg(&rung)
            .query_async::<i64>(conn)
            .await?;
    }
    // Serve tx first even within a blocking read's result.
    out.sort_by_key(|e| e.lane != Lane::Tx);
    Ok(out)
}

/// What one reclaim call did.
#[derive(Debug, Default)]
pub struct Reclaimed {
    pub next_cursor: String,
    pub entries: Vec<RawEntry>,
    pub dead_lettered: u64,
    /// The job ids of the entries dead-lettered (those with a readable id): the caller marks
    /// them dead in Postgres.
    pub dead_jobs: Vec<uuid::Uuid>,
    pub deleted: u64,
}

/// Claim entries of `source` idle for at least `min_idle_ms` (their consumer is presumed dead),
/// dead-lettering those delivered more than `max_deliveries` times (lua/reclaim.lua).
#[allow(clippy::too_many_arguments)]
pub async fn reclaim<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    source: &Source,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
    max_deliveries: u32,
) -> RedisResult<Reclaimed> {
    let lane = source.lane;
    let mut cmd = RECLAIM.call(&[&keys.source(source), &keys.dead(source.partition)]);
    cmd.arg(GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg(count)
        .arg(max_deliveries)
        .arg(lane.as_str())
        .arg(if source.tenant.is_some() { "1" } else { "0" });
    let v = scripts::run_one(conn, cmd).await?;
    let mut out = Reclaimed {
        next_cursor: "0-0".into(),
        ..Default::default()
    };
    if let Value::Array(items) = v
        && let [cursor, entries, dead, deleted] = items.as_slice()
    {
        if let Value::BulkString(c) = cursor {
            out.next_cursor = String::from_utf8_lossy(c).into_owned();
        }
        out.entries = wire::parse_entries(entries, source);
        if let Value::Array(ids) = dead {
            out.dead_lettered = ids.len() as u64;
            out.dead_jobs = ids
                .iter()
                .filter_map(|v| match v {
                    Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                })
                .collect();
        }
        if let Value::Int(n) = deleted {
            out.deleted = *n as u64;
        }
    }
    Ok(out)
}

/// `settle.lua` for a tenant stream, deleting `ids` (acked already).
fn settle_cmd(keys: &Keys, source: &Source, ids: &[&String]) -> redis::Cmd {
    let p = source.partition;
    let mut c = SETTLE.call(&[&keys.source(source), &keys.bulk_ring(p), &keys.bulk_held(p)]);
    c.arg(GROUP)
        .arg(source.tenant.as_deref().unwrap_or(""))
        .arg(ids);
    c
}

/// Bring a tenant stream and the ring in step (lua/settle.lua) without deleting anything: after
/// reclaim, whose dead letters at max deliveries are acked (and deleted) inside reclaim.lua.
pub async fn settle<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    source: &Source,
) -> RedisResult<()> {
    if source.tenant.is_none() {
        return Ok(());
    }
    scripts::run_one(conn, settle_cmd(keys, source, &[]))
        .await
        .map(drop)
}

/// The tenant bulk streams of partition `p` that may hold entries idle past `min_idle_ms`
/// (lua/reclaim_due.lua), at most `limit`, with the entries pending on each; each comes due
/// again `recheck_ms` later.
pub async fn reclaim_due<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    p: u16,
    min_idle_ms: u64,
    recheck_ms: u64,
    limit: usize,
) -> RedisResult<Vec<(Source, u64)>> {
    let mut cmd = RECLAIM_DUE.call(&[&keys.bulk_held(p)]);
    cmd.arg(GROUP)
        .arg(min_idle_ms)
        .arg(recheck_ms)
        .arg(limit)
        .arg(keys.tenant_stream_prefix(p));
    let v = scripts::run_one(conn, cmd).await?;
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    Ok(items
        .chunks_exact(2)
        .filter_map(|pair| match pair {
            [Value::BulkString(b), Value::Int(n)] => Some((
                Source {
                    partition: p,
                    lane: Lane::Bulk,
                    tenant: Some(String::from_utf8_lossy(b).as_ref().into()),
                },
                (*n).max(0) as u64,
            )),
            _ => None,
        })
        .collect())
}

/// Move due delayed entries of every partition back to their lanes; returns how many moved.
pub async fn promote_due<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    limit: usize,
) -> RedisResult<u64> {
    let cmds = (0..keys.partitions())
        .map(|p| {
            let mut c = PROMOTE.call(&[
                &keys.delayed(p),
                &keys.lane(p, Lane::Tx),
                &keys.lane(p, Lane::Bulk),
                &keys.delayed_tx(p),
                &keys.bulk_ring(p),
                &keys.bulk_bell(p),
            ]);
            c.arg(limit).arg(keys.tenant_stream_prefix(p)).arg(GROUP);
            c
        })
        .collect();
    let mut moved = 0;
    for r in scripts::run_pipeline(conn, cmds).await? {
        if let Value::Int(n) = r? {
            moved += n as u64;
        }
    }
    Ok(moved)
}

/// [`trim_done`] on a pooled connection, counted: the entries removed go to
/// `mailfleet_stream_trimmed_total`, a failure to `mailfleet_redis_errors_total{op="trim"}`
/// and a warning naming `who` trimmed. `None` when it failed.
pub async fn trim_counted(pool: &super::Pool, keys: &Keys, who: &str) -> Option<u64> {
    use crate::metrics::METRICS;
    let result = match pool.get().await {
        Ok(mut conn) => trim_done(&mut *conn, keys).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(n) => {
            METRICS.stream_trimmed.inc_by(n);
            Some(n)
        }
        Err(e) => {
            METRICS.redis_errors.with_label_values(&["trim"]).inc();
            tracing::warn!(error.message = %e, who, "trimming the lane streams failed");
            None
        }
    }
}

/// Trim every lane stream below what every consumer group is done with (lua/trim.lua): one
/// script per stream, in one pipeline. Returns the entries removed.
pub async fn trim_done<C: ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> RedisResult<u64> {
    let cmds = (0..keys.partitions())
        .flat_map(|p| Lane::ALL.into_iter().map(move |l| (p, l)))
        .map(|(p, l)| TRIM.call(&[&keys.lane(p, l)]))
        .collect();
    let mut removed = 0;
    for r in scripts::run_pipeline(conn, cmds).await? {
        if let Value::Array(v) = r?
            && let Some(Value::Int(n)) = v.first()
        {
            removed += (*n).max(0) as u64;
        }
    }
    Ok(removed)
}

/// Most entry ids one `touch.lua` call refreshes: a call is one unit of work for Redis, and
/// every other client waits while it runs, so thousands of live entries are split into short
/// calls (about half a millisecond each) that other clients' commands can run between.
pub const TOUCH_CHUNK: usize = 256;

/// A stream entry id's (milliseconds, sequence), for sorting in stream order (as strings,
/// "10-0" would sort before "9-0"). An id that does not parse sorts first.
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Reset the idle time of entries this consumer is still working on (lua/touch.lua): per
/// stream, the ids in stream order, [`TOUCH_CHUNK`] per call, all in one pipeline. Returns how
/// many entries were still this consumer's.
pub async fn touch<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    consumer: &str,
    entries: &BTreeMap<Source, Vec<String>>,
) -> RedisResult<u64> {
    let mut cmds = Vec::new();
    for (source, ids) in entries {
        let mut ids: Vec<&String> = ids.iter().collect();
        ids.sort_by_key(|id| stream_order(id));
        for chunk in ids.chunks(TOUCH_CHUNK) {
            let (Some(low), Some(high)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let mut c = TOUCH.call(&[&keys.source(source)]);
            c.arg(GROUP).arg(consumer).arg(*low).arg(*high).arg(chunk);
            cmds.push(c);
        }
    }
    let mut n = 0;
    for r in scripts::run_pipeline(conn, cmds).await? {
        if let Value::Int(k) = r? {
            n += k as u64;
        }
    }
    Ok(n)
}

/// A job to put back on its lane as a fresh entry (same id, same payload).
#[derive(Debug, Clone)]
pub struct Requeue {
    pub partition: u16,
    pub lane: Lane,
    pub id: crate::domain::JobId,
    pub idem: Option<String>,
    pub enqueued_at_ms: i64,
    pub payload: String,
    /// Dead-letter replays so far (see `wire::Job::replays`).
    pub replays: u32,
    /// The job's tenant: a tenant's bulk goes back to the tenant's own stream.
    pub tenant: Option<String>,
}

/// Put each job back on its stream, pipelined: tx and bulk without a tenant by XADD to the
/// lane; a tenant's bulk into the bulk delayed set, due at once (scored by when it was first
/// enqueued, so older jobs come first), from where `lua/promote.lua` moves it to the tenant's
/// own stream and into the ring, as it does every retry, so a re-enqueued backlog keeps its
/// fair share instead of crowding the shared stream. No dedup check: the Postgres claim makes
/// a second entry for a job harmless (it is acked without a send once the job is final).
pub async fn requeue<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    jobs: &[Requeue],
) -> RedisResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    for j in jobs {
        if let (Lane::Bulk, Some(tenant)) = (j.lane, j.tenant.as_deref()) {
            let member = wire::member_of(&wire::Member {
                id: j.id,
                idem: j.idem.as_deref(),
                enqueued_at_ms: j.enqueued_at_ms,
                payload: &j.payload,
                lane: j.lane,
                tenant: Some(tenant),
                replays: j.replays,
            });
            p.cmd("ZADD")
                .arg(keys.delayed_of(j.partition, Lane::Bulk))
                .arg(j.enqueued_at_ms.max(0))
                .arg(member)
                .ignore();
            continue;
        }
        let fields = wire::encode_fields(
            j.id,
            j.idem.as_deref(),
            j.enqueued_at_ms,
            &j.payload,
            j.replays,
        );
        p.cmd("XADD")
            .arg(keys.lane(j.partition, j.lane))
            .arg("*")
            .arg(&fields)
            .ignore();
    }
    p.query_async::<()>(conn).await
}

/// Every reason a dead-letter entry can carry, in one place: the worker's own here, the wire
/// format's in [`wire::DECODE_REASONS`]. `lua/reclaim.lua` spells [`MAX_DELIVERIES`] itself
/// (a test holds it to this one).
pub mod dead_reason {
    /// Every attempt used up.
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    /// Delivered more than `max_deliveries` times without an outcome (crashes its worker).
    pub const MAX_DELIVERIES: &str = "max_deliveries";
    /// Dead in Postgres, its dead-letter write cut off; written when it was next read.
    pub const DEAD_UNLETTERED: &str = "dead_unlettered";

    /// Every reason, the wire format's first.
    pub fn all() -> impl Iterator<Item = &'static str> {
        super::wire::DECODE_REASONS.into_iter().chain([
            MAX_ATTEMPTS,
            MAX_DELIVERIES,
            DEAD_UNLETTERED,
        ])
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn reclaim_lua_spells_max_deliveries_as_this_list_does() {
            let lua = include_str!("../../lua/reclaim.lua");
            assert!(lua.contains(&format!("'reason', '{}'", super::MAX_DELIVERIES)));
        }
    }
}

/// A dead-letter request: the entry, why, the last error and the attempts so far.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub entry_id: String,
    pub reason: String,
    /// The error class: `malformed`, `no_outcome`, or the provider error class of the last
    /// attempt (`transient`, `quota_auth`); `mailfleet dlq` filters on it.
    pub class: String,
    pub error: String,
    pub attempts: i32,
}

/// A retry: (stream entry id, due time in unix ms, delayed-set member).
type Retry = (String, i64, String);

/// The Redis side of finishing a batch, grouped by stream so it goes out as one pipeline with
/// one command per stream and kind.
#[derive(Debug, Default)]
pub struct Finish {
    acks: BTreeMap<Source, Vec<String>>,
    retries: BTreeMap<Source, Vec<Retry>>,
    dead: BTreeMap<Source, Vec<DeadLetter>>,
}

impl Finish {
    pub fn ack(&mut self, source: Source, entry_id: String) {
        self.acks.entry(source).or_default().push(entry_id);
    }
    /// Reschedule an entry `delay_ms` from now, by Redis' clock (lua/retry.lua).
    pub fn retry(&mut self, source: Source, entry_id: String, delay_ms: i64, member: String) {
        self.retries
            .entry(source)
            .or_default()
            .push((entry_id, delay_ms, member));
    }
    pub fn dead_letter(&mut self, source: Source, d: DeadLetter) {
        self.dead.entry(source).or_default().push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.retries.is_empty() && self.dead.is_empty()
    }
    /// How many entries this finishes.
    pub fn len(&self) -> usize {
        self.acks.values().map(Vec::len).sum::<usize>()
            + self.retries.values().map(Vec::len).sum::<usize>()
            + self.dead.values().map(Vec::len).sum::<usize>()
    }

    /// Issue everything in one pipeline. Every command is idempotent (XACK of an acked entry
    /// is a no-op; a retried member is a set member; a dead letter is only written for an entry
    /// still pending, see lua/dead_letter.lua and lua/retry.lua), so the caller may repeat a failed `execute`.
    /// A tenant stream's entries are also deleted once acked, by one `settle.lua` per stream
    /// after the acks and scripts, which deletes the stream once it is empty or puts the tenant
    /// back in the ring when entries wait (nothing trims tenant streams).
    pub async fn execute<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &Keys,
    ) -> RedisResult<()> {
        let mut cmds = Vec::new();
        let mut done: BTreeMap<&Source, Vec<&String>> = BTreeMap::new();
        for (source, ids) in &self.acks {
            let mut c = redis::cmd("XACK");
            c.arg(keys.source(source)).arg(GROUP).arg(ids);
            cmds.push(c);
            if source.tenant.is_some() {
                done.entry(source).or_default().extend(ids);
            }
        }
        for (source, items) in &self.retries {
            let (p, lane) = (source.partition, source.lane);
            let mut c = RETRY.call(&[&keys.delayed_of(p, lane), &keys.source(source)]);
            c.arg(GROUP);
            for (id, due, member) in items {
                c.arg(id).arg(*due).arg(member);
            }
            cmds.push(c);
            if source.tenant.is_some() {
                done.entry(source)
                    .or_default()
                    .extend(items.iter().map(|(id, _, _)| id));
            }
        }
        for (source, items) in &self.dead {
            let mut c = DEAD_LETTER.call(&[&keys.dead(source.partition), &keys.source(source)]);
            c.arg(GROUP).arg(source.lane.as_str());
            for d in items {
                c.arg(&d.entry_id)
                    .arg(&d.reason)
                    .arg(&d.class)
                    .arg(&d.error)
                    .arg(d.attempts);
            }
            cmds.push(c);
            if source.tenant.is_some() {
                done.entry(source)
                    .or_default()
                    .extend(items.iter().map(|d| &d.entry_id));
            }
        }
        for (source, ids) in done {
            cmds.push(settle_cmd(keys, source, &ids));
        }
        for r in scripts::run_pipeline(conn, cmds).await? {
            r?;
        }
        Ok(())
    }
}
