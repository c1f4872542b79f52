//! The scheduler at platform scale: thousands of schedules due at the same instant (every
//! tenant's digest at 09:00). Each tick fires exactly once, none is recorded missed because the
//! leader's own backlog made it late, and every member's job is in Postgres and on its stream
//! once. The leader killed mid-pass is in `tests/it/leader.rs`.

use crate::scheduler::digest_template;
use crate::support::*;
use mailfleet::Lane;
use mailfleet::lease::{self, LeaseKeys};
use mailfleet::scheduler;
use mailfleet::store::{self, fence};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Schedules due at once: more than one tick pass (1,000) and many fan-out groups.
const N: i64 = 2500;

#[sqlx::test]
async fn thousands_of_schedules_due_at_once_each_fire_once_and_none_is_skipped(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    digest_template(&pg).await;
    let mut s = scheduler::Settings::new("scale/1");
    s.lease_ttl = Duration::from_secs(10);
    s.fanout_batch = 200;
    // Any tick handled more than 1 ms after its time would count as missed if lateness were
    // measured against the clock: every one of these would be `skipped` (catch-up skip).
    s.grace = Duration::from_millis(1);
    let deps = scheduler::Deps {
        pg: pg.clone(),
        redis: redis.pool.clone(),
        producer: redis.producer(),
        lease_keys: LeaseKeys::new(redis.keys.prefix(), lease::SCHEDULER),
    };
    let token = CancellationToken::new();
    let handle = scheduler::start(s, deps, token.clone());
    eventually("the candidate leads", WAIT, || async {
        fence::holder(&pg, lease::SCHEDULER)
            .await
            .ok()
            .flatten()
            .and_then(|(_, h)| h)
            .filter(|h| h.starts_with("scale/1"))
    })
    .await;

    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let cron = scheduler::cron::at_second(at);
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(at.timestamp(), 0).unwrap();
    store::bench::skewed_schedules(&pg, N, &cron, at, "digest")
        .await
        .unwrap();
    eventually(
        "every tick fired and fanned out",
        Duration::from_secs(120),
        || async {
            (store::bench::schedule_work_left(&pg, at).await.ok()? == 0 && chrono::Utc::now() > at)
                .then_some(())
        },
    )
    .await;
    token.cancel();
    handle.await.unwrap();

    let (runs, done, other, enqueued): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'),
                count(*) FILTER (WHERE status <> 'done'), COALESCE(sum(enqueued), 0)::bigint
           FROM schedule_runs WHERE tick = $1",
    )
    .bind(at)
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(
        (runs, done, other, enqueued),
        (N, N, 0, N),
        "one done run per schedule, none skipped or stale"
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM emails WHERE idempotency_key LIKE 'sched:%'",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (N, N), "one job per member");
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await,
        N,
        "every job on the stream, once"
    );
    // Every schedule moved past the tick: nothing is due again.
    let due: i64 = sqlx::query_scalar("SELECT count(*) FROM schedules WHERE next_tick <= $1")
        .bind(at)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(due, 0);
}
