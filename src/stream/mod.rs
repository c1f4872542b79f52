//! Redis Streams: the key layout, wire format v1, and the consumer's reads and acks.
//!
//! Invariants:
//! - every key one Lua script touches carries the same `{partition}` hash tag (see [`keys`]), so
//!   the code runs unchanged on Redis Cluster;
//! - job streams are never trimmed with MAXLEN (that would drop unacked work); the scheduler
//!   leader trims them with `lua/trim.lua` (XTRIM MINID below what every group has acked);
//! - anything on a stream that does not decode as wire format v1 is dead-lettered with a reason
//!   by the worker, never dropped and never a crash ([`wire::decode`]).
//!
//! Redis commands are issued here and by `scripts.rs`, the producer, `lease/`, `ratelimit/`
//! and `dlq.rs` (see ARCHITECTURE.md); every key any of them uses comes from [`keys`].

pub mod backlog;
pub mod conn;
pub mod consumer;
pub mod depth;
pub mod keys;
pub mod local_cluster;
pub mod partitions;
pub mod pause;
pub mod wire;

pub use keys::{Keys, Source};
pub use wire::{DecodeError, Job, RawEntry};

pub const GROUP: &str = "mailfleet";

pub use conn::{Blocking, Pool, PoolError, blocking_connection, cluster_nodes, pool};

/// Whether Redis answers a PING through `pool` (for `/readyz`).
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let mut c = pool.get().await.map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut *c)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Delete every key under `prefix:` (SCAN, then DEL in batches): for scratch prefixes such as
/// `mailfleet bench`'s, never a live deployment's. Returns how many keys went.
pub async fn delete_prefix<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
) -> redis::RedisResult<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Calls per command so far, from `INFO commandstats` (commands run inside scripts included),
/// for `mailfleet bench`.
pub async fn command_calls<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<std::collections::BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(parse_commandstats(&info))
}

/// The Redis server's process id (`INFO server`), to read its CPU time when it is local.
pub async fn server_pid<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<Option<u32>> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok()))
}

/// `cmdstat_<name>:calls=<n>,usec=...` lines into name → calls.
pub fn parse_commandstats(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod commandstats_tests {
    #[test]
    fn commandstats_lines_parse_to_calls() {
        let info = "# Commandstats\r\ncmdstat_xadd:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_client|setname:calls=2,usec=1\r\nnoise\r\n";
        let m = super::parse_commandstats(info);
        assert_eq!(m.get("xadd"), Some(&12));
        assert_eq!(m.get("client|setname"), Some(&2));
        assert_eq!(m.len(), 2);
    }
}
