//! mailfleet on a real Redis Cluster (6 local redis-server processes, 3 masters with a
//! replica each): jobs spread over 12 partitions, every one sent once; and a master killed in
//! the middle of a run, its replica promoted, without losing an email a worker had seen.

use crate::support::*;
use mailfleet::mock::MockConfig;
use mailfleet::stream::local_cluster::{LocalCluster, node_cmd};
use mailfleet::{Lane, NewJob};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

const PARTITIONS: u16 = 12;

fn jobs(from: usize, n: usize, tag: &str) -> Vec<NewJob> {
    (from..from + n)
        .map(|i| {
            let mut j = job(
                if i % 5 == 0 { Lane::Tx } else { Lane::Bulk },
                &format!("user{i}@example.com"),
            );
            j.idempotency_key = Some(format!("{tag}-{i}"));
            // Half the bulk belongs to one of four tenants: their own streams, in each
            // partition's fair ring, on whichever master holds the partition.
            if j.lane == Lane::Bulk && i % 2 == 0 {
                j.payload.tenant = Some(format!("tenant{}", i % 8));
            }
            j
        })
        .collect()
}

/// The masters (by port) that hold a partition's keys: on a plain connection only the owner
/// of a key's slot answers for it; every other master redirects (MOVED).
async fn masters_of_partitions(cluster: &LocalCluster, redis: &TestRedis) -> BTreeSet<u16> {
    let mut owners = BTreeSet::new();
    for p in 0..PARTITIONS {
        let key = redis.keys.lane(p, Lane::Bulk);
        for port in cluster.masters().await {
            if node_cmd(port, &["EXISTS", &key]).await.is_ok() {
                owners.insert(port);
            }
        }
    }
    owners
}

#[sqlx::test]
async fn twelve_partitions_on_a_redis_cluster_send_every_email_once(pg: PgPool) {
    let cluster = LocalCluster::start().await.expect("a local Redis Cluster");
    let redis = TestRedis::on_cluster(&cluster.url, PARTITIONS);
    let mock = TestMock::start(MockConfig::default()).await;
    let a = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let b = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let n = 1_200;
    // Durability `replicated`: one WAIT per slot written, each on the master serving it.
    let producer = redis.producer().with_replicas(1, Duration::from_secs(2));
    let mut ids = HashSet::new();
    for chunk in 0..6 {
        // One send_many is one pipeline over all 12 partitions: split by slot underneath.
        for e in producer
            .send_many(jobs(chunk * 200, 200, "twelve"))
            .await
            .expect("enqueue on the cluster")
        {
            ids.insert(e.id.as_uuid());
        }
    }
    assert_eq!(ids.len(), n);
    eventually("every email is sent", Duration::from_secs(60), || async {
        (count_status(&pg, "sent").await == n as i64).then_some(())
    })
    .await;
    let stats = mock.state.stats();
    assert_eq!(
        (stats.received, stats.unique, stats.duplicates),
        (n as u64, n as u64, 0),
        "lost=0, duplicates=0"
    );
    // Every tenant stream drained and deleted: each ring holds at most the shared stream.
    eventually(
        "every tenant stream gone",
        Duration::from_secs(30),
        || async {
            let mut left = 0;
            for p in 0..PARTITIONS {
                let members: Vec<String> = redis::cmd("ZRANGE")
                    .arg(redis.keys.bulk_ring(p))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut *redis.conn().await)
                    .await
                    .unwrap();
                left += members.iter().filter(|m| !m.is_empty()).count();
                for t in 0..8 {
                    let n: i64 = redis::cmd("EXISTS")
                        .arg(redis.keys.tenant_stream(p, &format!("tenant{t}")))
                        .query_async(&mut *redis.conn().await)
                        .await
                        .unwrap();
                    left += n as usize;
                }
            }
            (left == 0).then_some(())
        },
    )
    .await;
    let used: usize = {
        let mut k = 0;
        for p in 0..PARTITIONS {
            for lane in Lane::ALL {
                let len: i64 = redis::cmd("XLEN")
                    .arg(redis.keys.lane(p, lane))
                    .query_async(&mut *redis.conn().await)
                    .await
                    .unwrap();
                k += usize::from(len > 0 && lane == Lane::Bulk);
            }
        }
        k
    };
    assert_eq!(used, PARTITIONS as usize, "every partition carried jobs");
    assert_eq!(
        masters_of_partitions(&cluster, &redis).await.len(),
        3,
        "the partitions live on every master"
    );
    a.stop().await;
    b.stop().await;
}

#[sqlx::test]
async fn a_master_killed_mid_run_loses_no_email_a_worker_had_seen(pg: PgPool) {
    let mut cluster = LocalCluster::start().await.expect("a local Redis Cluster");
    let redis = TestRedis::on_cluster(&cluster.url, PARTITIONS);
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(5),
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.visibility_timeout_ms = 3_000;
    s.reclaim_interval_ms = 500;
    s.reconcile_after = Duration::from_secs(5);
    s.reconcile_interval_ms = 1_000;
    s.max_attempts = 50;
    s.retry_base_ms = 100;
    s.retry_max_ms = 1_000;
    let a = TestWorker::start(&pg, &redis, &mock.url, s.clone()).await;
    let b = TestWorker::start(&pg, &redis, &mock.url, s).await;

    let producer = redis.producer();
    let (chunks, per) = (30, 100);
    let mut acked = HashSet::new();
    let mut killed = None;
    let started = Instant::now();
    for c in 0..chunks {
        if c == 10 {
            let victim = *cluster.masters().await.first().expect("a master");
            cluster.kill(victim);
            killed = Some((victim, started.elapsed()));
        }
        // A chunk that fails (its master is down, the cluster is reconfiguring) is sent again
        // whole; its idempotency keys make that safe.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match producer.send_many(jobs(c * per, per, "failover")).await {
                Ok(sent) => {
                    acked.extend(sent.into_iter().map(|e| e.id.as_uuid()));
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the cluster never took writes: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = Instant::now();
    cluster
        .wait_ok(Duration::from_secs(30))
        .await
        .expect("the cluster recovers");
    let failover_ms = failover.elapsed().as_millis();
    // Every job a worker saw (it has a row) ends final; none stays queued or sending.
    eventually("every seen job is final", Duration::from_secs(120), || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM emails WHERE status NOT IN ('sent', 'failed', 'dead', 'suppressed')",
        )
        .fetch_one(&pg)
        .await
        .unwrap();
        (open == 0).then_some(())
    })
    .await;
    let rows: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM emails")
        .fetch_all(&pg)
        .await
        .unwrap();
    let seen: HashSet<uuid::Uuid> = rows.into_iter().collect();
    let sent = count_status(&pg, "sent").await;
    let stats = mock.state.stats();
    let redis_lost = acked.difference(&seen).count();
    let (victim, at) = killed.expect("a master was killed");
    println!(
        "{}",
        serde_json::json!({
            "scenario": "cluster-failover-test",
            "emails": acked.len(),
            "seen_by_workers": seen.len(),
            "sent": sent,
            "lost": seen.len() as i64 - sent,
            "redis_lost": redis_lost,
            "duplicates": stats.duplicates,
            "killed_master": victim,
            "killed_at_ms": at.as_millis() as u64,
            "cluster_ok_after_ms": failover_ms as u64,
        })
    );
    assert_eq!(acked.len(), chunks * per, "every chunk was acknowledged");
    if sent != seen.len() as i64 {
        // What became of the rest, for the failure message.
        let unsent: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, lane, min(last_error), count(*) FROM emails WHERE status <> 'sent'
             GROUP BY status, lane",
        )
        .fetch_all(&pg)
        .await
        .unwrap();
        panic!(
            "every email a worker saw was sent: {sent} of {}; the others: {unsent:?}",
            seen.len()
        );
    }
    assert_eq!(stats.duplicates, 0, "no email was sent twice");
    assert_eq!(
        stats.unique as usize,
        seen.len(),
        "the provider got exactly the seen emails"
    );
    a.stop().await;
    b.stop().await;
}

/// One master stops answering (CLIENT PAUSE ALL: it stays in the cluster, no failover) while
/// email for the other masters' partitions arrives: every worker reads every partition with
/// its own reader, so those emails are all sent while the paused master's readers wait.
#[sqlx::test]
async fn a_stalled_master_holds_up_only_its_own_partitions(pg: PgPool) {
    let cluster = LocalCluster::start().await.expect("a local Redis Cluster");
    let redis = TestRedis::on_cluster(&cluster.url, PARTITIONS);
    let mock = TestMock::start(MockConfig::default()).await;
    let a = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let b = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let masters = cluster.masters().await;
    let victim = masters[0];
    let mut stalled = BTreeSet::new();
    for p in 0..PARTITIONS {
        if node_cmd(victim, &["EXISTS", &redis.keys.lane(p, Lane::Bulk)])
            .await
            .is_ok()
        {
            stalled.insert(p);
        }
    }
    assert!(
        !stalled.is_empty() && stalled.len() < PARTITIONS as usize,
        "{stalled:?}"
    );
    // Idempotency keys route jobs: pick 300 that land on the other masters.
    let free: Vec<NewJob> = (0..)
        .map(|i| format!("free-{i}"))
        .filter(|k| !stalled.contains(&redis.keys.partition_for(k)))
        .take(300)
        .map(|k| {
            let mut j = job(Lane::Bulk, "someone@example.com");
            j.idempotency_key = Some(k);
            j
        })
        .collect();
    let pause_ms = 15_000u64;
    node_cmd(victim, &["CLIENT", "PAUSE", &pause_ms.to_string(), "ALL"])
        .await
        .expect("pause the victim");
    let paused_at = Instant::now();
    redis
        .producer()
        .send_many(free)
        .await
        .expect("enqueue on the free masters");
    eventually(
        "the free partitions' emails are sent",
        Duration::from_secs(10),
        || async { (count_status(&pg, "sent").await == 300).then_some(()) },
    )
    .await;
    assert!(
        paused_at.elapsed() < Duration::from_millis(pause_ms),
        "sent while the victim was still paused"
    );
    assert_eq!(mock.state.stats().duplicates, 0);
    // The victim answers nobody until its pause ends (UNPAUSE too): the workers' readers for
    // its partitions are still waiting when the test drops them and the cluster.
    drop((a, b));
}
