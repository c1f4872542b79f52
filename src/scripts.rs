//! The Lua scripts from lua/, loaded with `include_str!`, and the one way to run them.
//!
//! Scripts are called with EVALSHA inside pipelines. Redis forgets loaded scripts when it
//! restarts, so [`run_pipeline`] reruns exactly the commands that failed with NOSCRIPT after
//! loading every script again; commands that succeeded are never repeated (an enqueue without an
//! idempotency key must not XADD twice).

use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value, aio::ConnectionLike};
use std::sync::LazyLock;

/// One script: its name (for errors), source and SHA-1.
#[derive(Debug)]
pub struct Lua {
    pub name: &'static str,
    pub source: &'static str,
    sha: String,
}

impl Lua {
    fn new(name: &'static str, source: &'static str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_owned();
        Lua { name, source, sha }
    }
    /// An EVALSHA command with these keys; the caller appends ARGV with `.arg(..)`.
    pub fn call(&self, keys: &[&str]) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len()).arg(keys);
        c
    }
}

pub static ENQUEUE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("enqueue", include_str!("../lua/enqueue.lua")));
pub static UNENQUEUE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("unenqueue", include_str!("../lua/unenqueue.lua")));
pub static READ: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("read", include_str!("../lua/read.lua")));
pub static RETRY: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("retry", include_str!("../lua/retry.lua")));
pub static PROMOTE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("promote", include_str!("../lua/promote.lua")));
pub static RECLAIM: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("reclaim", include_str!("../lua/reclaim.lua")));
pub static RECLAIM_DUE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("reclaim_due", include_str!("../lua/reclaim_due.lua")));
pub static SETTLE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("settle", include_str!("../lua/settle.lua")));
pub static TENANTS: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("tenants", include_str!("../lua/tenants.lua")));
pub static DEAD_LETTER: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("dead_letter", include_str!("../lua/dead_letter.lua")));

pub static TOUCH: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("touch", include_str!("../lua/touch.lua")));

pub static DLQ_REPLAY: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("dlq_replay", include_str!("../lua/dlq_replay.lua")));

pub static LEASE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("lease", include_str!("../lua/lease.lua")));

pub static TRIM: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("trim", include_str!("../lua/trim.lua")));
pub static BACKLOG: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("backlog", include_str!("../lua/backlog.lua")));
pub static RATELIMIT: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("ratelimit", include_str!("../lua/ratelimit.lua")));

fn all() -> [&'static Lua; 16] {
    [
        &ENQUEUE,
        &UNENQUEUE,
        &READ,
        &RETRY,
        &PROMOTE,
        &DEAD_LETTER,
        &RECLAIM,
        &RECLAIM_DUE,
        &TENANTS,
        &SETTLE,
        &TOUCH,
        &DLQ_REPLAY,
        &LEASE,
        &RATELIMIT,
        &TRIM,
        &BACKLOG,
    ]
}

/// SCRIPT LOAD every script (one pipelined round trip).
pub async fn load_all<C: ConnectionLike + Send>(conn: &mut C) -> RedisResult<()> {
    let mut p = redis::pipe();
    for s in all() {
        p.cmd("SCRIPT").arg("LOAD").arg(s.source).ignore();
    }
    p.query_async::<()>(conn).await
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Run `cmds` as one pipeline and return each command's result in order. Commands that failed
/// with NOSCRIPT are rerun once after the scripts are loaded; any other per-command error is
/// returned in its slot for the caller to judge. A connection-level failure is the `Err`.
pub async fn run_pipeline<C: ConnectionLike + Send>(
    conn: &mut C,
    cmds: Vec<Cmd>,
) -> RedisResult<Vec<RedisResult<Value>>> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    p.ignore_errors();
    for c in &cmds {
        p.add_command(c.clone());
    }
    let mut results: Vec<RedisResult<Value>> = p.query_async(conn).await?;
    let missing: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().is_err_and(is_noscript))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        load_all(conn).await?;
        let mut p = redis::pipe();
        p.ignore_errors();
        for &i in &missing {
            p.add_command(cmds[i].clone());
        }
        let again: Vec<RedisResult<Value>> = p.query_async(conn).await?;
        for (i, r) in missing.into_iter().zip(again) {
            results[i] = r;
        }
    }
    Ok(results)
}

/// Run one command through [`run_pipeline`] and return its result.
pub async fn run_one<C: ConnectionLike + Send>(conn: &mut C, cmd: Cmd) -> RedisResult<Value> {
    run_pipeline(conn, vec![cmd])
        .await?
        .pop()
        .unwrap_or(Ok(Value::Nil))
}
