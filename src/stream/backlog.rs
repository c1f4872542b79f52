//! Which entries a stream's consumer group has still to be delivered (`lua/backlog.lua`), so the reconciler can tell a job
//! whose entry is only waiting behind a backlog from one whose entry Redis lost: a campaign
//! draining at a provider's limit outlasts `MAILFLEET_RECONCILE_AFTER_SECS`, and re-enqueueing
//! its waiting jobs would grow the stream by the whole backlog at every pass.

use crate::scripts::{self, BACKLOG};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

/// How far a producer's clock (a job's `enqueued_at`) and Redis's (the time in an entry id) may
/// disagree. Wider only delays the re-enqueue of a job lost next to a backlog.
pub const CLOCK_MARGIN_MS: i64 = 60_000;

/// One stream's undelivered entries, as `lua/backlog.lua` saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// The time part of the oldest undelivered entry's id (-1: nothing waits).
    pub oldest_ms: i64,
    /// The time part of the stream's last-generated-id (-1: nothing waits).
    pub newest_ms: i64,
}

impl Backlog {
    /// Whether an entry added at `at_ms` may still wait here undelivered: the undelivered
    /// entries span `at_ms`, give or take [`CLOCK_MARGIN_MS`].
    pub fn may_hold(&self, at_ms: i64) -> bool {
        self.oldest_ms >= 0
            && self.oldest_ms <= at_ms + CLOCK_MARGIN_MS
            && self.newest_ms >= at_ms - CLOCK_MARGIN_MS
    }
}

/// The backlog of each of `streams` (keys) for `group`, in one pipeline.
pub async fn read<C: ConnectionLike + Send>(
    conn: &mut C,
    streams: &[String],
    group: &str,
) -> RedisResult<Vec<Backlog>> {
    let cmds = streams
        .iter()
        .map(|s| {
            let mut c = BACKLOG.call(&[s.as_str()]);
            c.arg(group);
            c
        })
        .collect();
    scripts::run_pipeline(conn, cmds)
        .await?
        .into_iter()
        .map(|r| {
            let v = r?;
            let n: Vec<i64> = redis::from_redis_value(v.clone())?;
            match n.as_slice() {
                [oldest_ms, newest_ms] => Ok(Backlog {
                    oldest_ms: *oldest_ms,
                    newest_ms: *newest_ms,
                }),
                _ => Err(unexpected(&v)),
            }
        })
        .collect()
}

fn unexpected(v: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "backlog.lua answered",
        format!("{v:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_800_000_000_000;

    fn b(oldest_ms: i64, newest_ms: i64) -> Backlog {
        Backlog {
            oldest_ms,
            newest_ms,
        }
    }

    #[test]
    fn a_job_among_undelivered_entries_may_still_be_waiting() {
        // The group is an hour behind the job, the stream runs past it.
        assert!(b(AT - 3_600_000, AT + 5_000).may_hold(AT));
        // Clocks a little apart either way: still possibly there.
        assert!(b(AT + 30_000, AT + 40_000).may_hold(AT));
        assert!(b(AT - 90_000, AT - 30_000).may_hold(AT));
    }

    #[test]
    fn a_job_no_undelivered_entry_is_near_cannot_be_waiting() {
        // Nothing undelivered (or no stream, or no group).
        assert!(!b(-1, -1).may_hold(AT));
        // Every undelivered entry is from well after the job: its own was delivered, or lost.
        assert!(!b(AT + 120_000, AT + 200_000).may_hold(AT));
        // Every undelivered entry is from well before it: its entry never got there (or was
        // lost with the stream's tail).
        assert!(!b(AT - 300_000, AT - 120_000).may_hold(AT));
    }
}
