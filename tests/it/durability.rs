//! Enqueue durability levels (docs/durability.md): `ledger` survives Redis losing an
//! acknowledged enqueue (the reconciler sends it from its `queued` row), a batch whose ledger
//! rows cannot be written is taken back whole, and `replicated` answers only once a replica
//! has the batch, refusing (and taking back) what no replica confirmed in time.

use crate::support::private::PrivateRedis;
use crate::support::*;
use mailfleet::mock::MockConfig;
use mailfleet::producer::{Durability, ProducerError};
use mailfleet::{Lane, NewJob};
use sqlx::PgPool;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn keyed(n: usize, tag: &str) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let lane = if i % 2 == 0 { Lane::Tx } else { Lane::Bulk };
            let mut j = job(lane, &format!("{tag}{i}@example.com"));
            j.idempotency_key = Some(format!("{tag}-{i}"));
            j
        })
        .collect()
}

async fn lane_entries(redis: &TestRedis) -> i64 {
    redis.xlen(&redis.keys.lane(0, Lane::Tx)).await
        + redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await
}

#[sqlx::test]
async fn a_ledgered_enqueue_that_redis_loses_is_sent_and_a_redis_only_one_is_not(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let ledgered = redis.producer().with_ledger(pg.clone());
    assert_eq!(ledgered.durability(), Durability::Ledger);
    let kept: Vec<uuid::Uuid> = ledgered
        .send_many(keyed(6, "ledger"))
        .await
        .expect("ledgered enqueue")
        .iter()
        .map(|e| e.id.as_uuid())
        .collect();
    let dropped: Vec<uuid::Uuid> = redis
        .producer()
        .send_many(keyed(6, "plain"))
        .await
        .expect("redis-only enqueue")
        .iter()
        .map(|e| e.id.as_uuid())
        .collect();
    assert_eq!(
        count_status(&pg, "queued").await,
        6,
        "one row per ledgered job"
    );

    // Redis loses every acknowledged entry before a worker reads one (a failover to a replica
    // that had none of them, say): the streams are gone, the groups made again empty.
    let mut conn = redis.conn().await;
    for lane in [Lane::Tx, Lane::Bulk] {
        let _: () = redis::cmd("DEL")
            .arg(redis.keys.lane(0, lane))
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    redis.ensure_groups().await;
    assert_eq!(lane_entries(&redis).await, 0);

    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.reconcile_after = Duration::from_millis(300);
    s.reconcile_interval_ms = 50;
    let worker = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("every ledgered job sent", WAIT, || async {
        (count_status(&pg, "sent").await == 6).then_some(())
    })
    .await;
    let counts = mock.state.counts();
    for id in &kept {
        assert_eq!(counts.get(&id.to_string()), Some(&1), "sent once");
    }
    // At `redis`, nothing but Redis knew of these jobs: nobody can send them.
    for id in &dropped {
        assert_eq!(status_of(&pg, *id).await, None);
        assert!(!counts.contains_key(&id.to_string()));
    }
    worker.stop().await;
}

#[sqlx::test]
async fn a_batch_whose_ledger_rows_cannot_be_written_is_taken_back_whole(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the ledger refuses'; END $$;
         CREATE TRIGGER refuse_rows BEFORE INSERT ON emails
           FOR EACH ROW EXECUTE FUNCTION refuse_rows();",
    )
    .execute(&pg)
    .await
    .unwrap();
    let producer = redis.producer().with_ledger(pg.clone());
    let err = producer
        .send_many(keyed(40, "refused"))
        .await
        .expect_err("no row, no enqueue");
    assert!(
        matches!(err, ProducerError::Ledger { sent_anyway: 0, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("nothing of the batch was enqueued")
    );
    assert_eq!(lane_entries(&redis).await, 0, "the batch was taken back");

    // The markers went with the entries: the retry with the same keys enqueues every job.
    sqlx::raw_sql("DROP TRIGGER refuse_rows ON emails")
        .execute(&pg)
        .await
        .unwrap();
    let again = producer.send_many(keyed(40, "refused")).await.unwrap();
    assert!(again.iter().all(|e| e.added));
    assert_eq!(lane_entries(&redis).await, 40);
    assert_eq!(count_status(&pg, "queued").await, 40);
}

#[sqlx::test]
async fn a_replicated_enqueue_is_refused_and_taken_back_when_no_replica_confirms(_pg: PgPool) {
    let master = PrivateRedis::start().await;
    let replica = PrivateRedis::replica_of(&master).await;
    let redis = TestRedis::at(&master.url);
    redis.ensure_groups().await;
    let producer = redis
        .producer()
        .with_replicas(1, Duration::from_millis(300));
    assert_eq!(producer.durability(), Durability::Replicated);
    let ok = producer.send_many(keyed(10, "confirmed")).await.unwrap();
    assert!(ok.iter().all(|e| e.added));

    // The replica stops taking the stream: WAIT confirms nothing within its 300 ms.
    replica.signal(SIGSTOP);
    let err = producer
        .send_many(keyed(10, "unconfirmed"))
        .await
        .expect_err("no replica confirmed it");
    replica.signal(SIGCONT);
    assert!(
        matches!(
            err,
            ProducerError::NotReplicated {
                wanted: 1,
                confirmed: 0,
                sent_anyway: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        lane_entries(&redis).await,
        10,
        "the refused batch was taken back"
    );

    // At `redis` the same enqueue is answered at once: the window `replicated` closes.
    replica.signal(SIGSTOP);
    let plain = redis.producer().send_many(keyed(10, "window")).await;
    replica.signal(SIGCONT);
    assert!(plain.is_ok());
    assert_eq!(lane_entries(&redis).await, 20);
    // Once the replica is back, the retry with the same keys is confirmed and enqueued.
    let retry = producer.send_many(keyed(10, "unconfirmed")).await.unwrap();
    assert!(retry.iter().all(|e| e.added));
}
