//! `mailfleet dlq`: a dead job replayed keeps its id and is sent; a poison entry replayed dies
//! again and is refused once it reaches max replays; dry runs change nothing; purge needs a filter.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;

async fn dlq(pg: &PgPool, redis: &TestRedis, args: &[&str]) -> (bool, String, String) {
    let out = mailfleet(pg, redis)
        .arg("dlq")
        .args(args)
        .output()
        .await
        .expect("run mailfleet dlq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two attempts, retried within milliseconds: a job dies fast.
fn fast_death() -> mailfleet::worker::Settings {
    let mut s = settings();
    s.max_attempts = 2;
    s.retry_base_ms = 10;
    s.retry_max_ms = 20;
    s
}

/// A worker whose provider answers 503 to everything, so every job dies after its retries.
async fn dying_worker(pg: &PgPool, redis: &TestRedis) -> (TestMock, TestWorker) {
    let failing = TestMock::start(MockConfig {
        failure_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let worker = TestWorker::start(pg, redis, &failing.url, fast_death()).await;
    (failing, worker)
}

#[sqlx::test]
async fn a_dead_job_replays_with_its_id_and_poison_never_loops(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // A job that dies at max attempts against a failing provider...
    let (_failing, worker) = dying_worker(&pg, &redis).await;
    let s = fast_death();
    let id = redis.enqueue(job(Lane::Tx, "replay@example.com")).await;
    // ...and a poison entry.
    let _: String = redis::cmd("XADD")
        .arg(redis.keys.lane(0, Lane::Bulk))
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("id")
        .arg("not-a-uuid")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    eventually("both dead-lettered", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 2
            && status_of(&pg, id).await.as_deref() == Some("dead"))
        .then_some(())
    })
    .await;
    worker.stop().await;

    let (ok, out, err) = dlq(&pg, &redis, &["list", "--reason", "max_attempts"]).await;
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].contains(&id.to_string()) && rows[0].contains("transient"),
        "{out}"
    );
    let (ok, out, _) = dlq(&pg, &redis, &["list", "--class", "malformed", "--json"]).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (ok, out, _) = dlq(&pg, &redis, &["list", "--since", "1h", "--until", "2h"]).await;
    assert!(ok);
    assert_eq!(
        out.lines().count(),
        1,
        "only the header: nothing is 2h old and 1h new"
    );

    // A dry run changes nothing.
    let (ok, out, _) = dlq(&pg, &redis, &["replay", "--dry-run"]).await;
    assert!(ok && out.contains("2 dead letter(s) match"), "{out}");
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 2);
    assert_eq!(status_of(&pg, id).await.as_deref(), Some("dead"));

    // With the provider healthy again, the replay sends the job under its own id, once.
    let healthy = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &healthy.url, s).await;
    let (ok, out, err) = dlq(&pg, &redis, &["replay", "--rate", "50"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("replayed=2"), "{out}");
    eventually("the replayed job sent", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    assert_eq!(healthy.state.counts().get(&id.to_string()), Some(&1));
    // The poison entry died again, carrying its replay count.
    eventually("the poison entry dead again", WAIT, || async {
        let dead = redis.dead_entries().await;
        (dead.len() == 1 && dead[0].get("orig_replays").map(String::as_str) == Some("1"))
            .then_some(())
    })
    .await;
    worker.stop().await;

    // At max replays it is refused and stays dead.
    let (ok, out, _) = dlq(&pg, &redis, &["replay", "--max-replays", "1"]).await;
    assert!(ok && out.contains("replayed=0 refused=1"), "{out}");
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 1);
    // A replay of a job already final in Postgres is refused too.
    let (_, out, _) = dlq(&pg, &redis, &["replay", "--job", &id.to_string()]).await;
    assert!(out.contains("replayed=0"), "{out}");

    // Purge needs a filter or --all; a dry run deletes nothing.
    let (ok, _, err) = dlq(&pg, &redis, &["purge"]).await;
    assert!(!ok && err.contains("needs a filter"), "{err}");
    let (ok, out, _) = dlq(&pg, &redis, &["purge", "--class", "malformed", "--dry-run"]).await;
    assert!(ok && out.contains("1 dead letter(s) match"), "{out}");
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 1);
    let (ok, out, _) = dlq(&pg, &redis, &["purge", "--class", "malformed"]).await;
    assert!(ok && out.contains("purged=1"), "{out}");
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 0);
}

#[sqlx::test]
async fn a_job_that_dies_after_retries_keeps_its_replay_count_and_stops_at_max_replays(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // Every attempt fails, so the job passes through the delayed set before it dies.
    let (_failing, worker) = dying_worker(&pg, &redis).await;
    let id = redis.enqueue(job(Lane::Tx, "again@example.com")).await;
    let dead_with = |replays: &'static str| {
        let (pg, redis) = (&pg, &redis);
        async move {
            eventually("dead, with its replay count", WAIT, || async {
                let dead = redis.dead_entries().await;
                (status_of(pg, id).await.as_deref() == Some("dead")
                    && dead.len() == 1
                    && dead[0].get("orig_replays").map_or("0", String::as_str) == replays)
                    .then_some(())
            })
            .await
        }
    };
    dead_with("0").await;
    let (ok, out, err) = dlq(&pg, &redis, &["replay", "--max-replays", "2"]).await;
    assert!(ok && out.contains("replayed=1"), "{out} {err}");
    // Retried through the delayed set, dead again: the count came through every rebuild.
    dead_with("1").await;
    let replays: i32 = sqlx::query_scalar("SELECT replays FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(
        replays, 1,
        "Postgres counts the replay too (the reconciler's source)"
    );
    let (ok, out, _) = dlq(&pg, &redis, &["replay", "--max-replays", "2"]).await;
    assert!(ok && out.contains("replayed=1"), "{out}");
    dead_with("2").await;
    let (ok, out, _) = dlq(&pg, &redis, &["replay", "--max-replays", "2"]).await;
    assert!(
        ok && out.contains("replayed=0 refused=1"),
        "at max replays the loop ends: {out}"
    );
    worker.stop().await;
}
