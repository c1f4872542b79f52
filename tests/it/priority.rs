//! Transactional email first at every stage a send waits in a worker: the send slots, a
//! provider's concurrency cap and the limiter's local queue each serve a waiting tx send
//! before any bulk send that waited longer. Each test fails on a first-come-first-served stage.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::config::Limit;
use mailfleet::mock::MockConfig;
use mailfleet::ratelimit::Limiter;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A send of `lane` waiting for a permit from `limiter`; it notes its lane in `done` once
/// served.
fn acquire(
    limiter: &Arc<Limiter>,
    name: &str,
    l: Limit,
    done: &Arc<Mutex<Vec<Lane>>>,
    lane: Lane,
) -> tokio::task::JoinHandle<()> {
    let (limiter, name, done) = (limiter.clone(), name.to_owned(), done.clone());
    tokio::spawn(async move {
        limiter
            .acquire(&name, &l, None, lane)
            .await
            .expect("a permit");
        done.lock().unwrap().push(lane);
    })
}

#[tokio::test]
async fn the_limiters_queue_serves_a_tx_send_before_bulk_sends_that_waited_longer() {
    let redis = TestRedis::new();
    let limiter = Arc::new(Limiter::new(redis.pool.clone(), redis.keys.prefix()));
    // Five permits a second, one per call: the sixth bulk send on waits for the window.
    let l = Limit {
        limit: 5,
        window_ms: 1000,
        tenant_limit: None,
        margin_ms: 20,
        cold_margin_ms: 20,
        spread_ms: 0,
    };
    let name = format!("prio-{}", uuid::Uuid::now_v7().simple());
    let done: Arc<Mutex<Vec<Lane>>> = Arc::default();
    let spawn = |lane: Lane| acquire(&limiter, &name, l, &done, lane);
    let bulk: Vec<_> = (0..15).map(|_| spawn(Lane::Bulk)).collect();
    // The bulk sends queue up (five get permits at once, the rest wait for the window).
    eventually("the window is full", WAIT, || async {
        (done.lock().unwrap().len() >= 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ahead = 15 - done.lock().unwrap().len();
    spawn(Lane::Tx).await.unwrap();
    let order = done.lock().unwrap().clone();
    let tx_at = order.iter().position(|l| *l == Lane::Tx).unwrap();
    let bulk_before = order[..tx_at].len();
    assert!(
        bulk_before <= 15 - ahead + 1,
        "of {ahead} bulk sends waiting when the tx send came, {} were served first",
        bulk_before - (15 - ahead)
    );
    for b in bulk {
        b.abort();
    }
}

/// A worker with one send slot (or one connection to the provider), a slow provider, a queue
/// of bulk sends read before the tx email arrived: the tx email is sent next.
async fn tx_overtakes_queued_bulk(pg: PgPool, send_slots: usize, provider_cap: Option<usize>) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let mut p = provider_config(&mock.url);
    p.name = format!("cap-{}", uuid::Uuid::now_v7().simple());
    p.concurrency = provider_cap;
    let mut s = settings();
    s.send_concurrency = send_slots;
    let cfg = mailfleet::config::SendConfig {
        providers: vec![p],
        routes: mailfleet::config::Routes::default(),
        breaker: mailfleet::config::BreakerConfig::default(),
    };
    let w = TestWorker::start_config(&pg, &redis, &redis.url, cfg, s).await;
    let bulk: Vec<uuid::Uuid> = {
        let mut v = Vec::new();
        for i in 0..20 {
            v.push(
                redis
                    .enqueue(job(Lane::Bulk, &format!("b{i}@example.com")))
                    .await,
            );
        }
        v
    };
    // Every bulk job is read (most of them waiting for the one slot) before the tx email
    // arrives: 20 sends of 100 ms each through one slot take two seconds.
    eventually("the bulk jobs are read", WAIT, || async {
        let (read, _) = redis.group_progress(Lane::Bulk).await;
        (read == 20 && mock.state.stats().received >= 1).then_some(())
    })
    .await;
    let sent_before = mock.state.stats().received as i64;
    let tx = redis.enqueue(job(Lane::Tx, "reset@example.com")).await;
    eventually("the tx email is sent", WAIT, || async {
        (status_of(&pg, tx).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    let bulk_sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emails WHERE id = ANY($1) AND sent_at <= (SELECT sent_at FROM emails WHERE id = $2)",
    )
    .bind(&bulk)
    .bind(tx)
    .fetch_one(&pg)
    .await
    .unwrap();
    // Besides those already sent when it arrived, at most the send under way and the one
    // granted meanwhile.
    assert!(
        bulk_sent <= sent_before + 2,
        "{} of the {} bulk emails still queued were sent before the tx email",
        bulk_sent - sent_before,
        20 - sent_before
    );
    assert!(
        sent_before < 15,
        "the queue was still long when the tx email came"
    );
    w.stop().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn the_send_slots_serve_a_tx_send_before_queued_bulk_sends(pg: PgPool) {
    tx_overtakes_queued_bulk(pg, 1, None).await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_providers_concurrency_cap_serves_a_tx_send_before_queued_bulk_sends(pg: PgPool) {
    tx_overtakes_queued_bulk(pg, 64, Some(1)).await;
}

/// Admission: bulk holds every entry of its in-flight pool (one batch, stuck on a slow
/// provider), and a tx email that arrives is still read at once, from the tx lane's own
/// pool. With one pool for both lanes it waited until the bulk batch finished.
#[sqlx::test(migrations = "./migrations")]
async fn a_tx_entry_is_admitted_while_bulk_holds_its_whole_in_flight_pool(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(1500),
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.batch_size = 10;
    s.max_in_flight = 10;
    s.tx_in_flight = 10;
    for i in 0..50 {
        redis
            .enqueue(job(Lane::Bulk, &format!("b{i}@example.com")))
            .await;
    }
    let w = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("bulk fills its pool", WAIT, || async {
        let (read, _) = redis.group_progress(Lane::Bulk).await;
        (read == 10).then_some(())
    })
    .await;
    let tx = redis.enqueue(job(Lane::Tx, "reset@example.com")).await;
    eventually("the tx entry is read", WAIT, || async {
        let (read, _) = redis.group_progress(Lane::Tx).await;
        (read == 1).then_some(())
    })
    .await;
    let (bulk_read, _) = redis.group_progress(Lane::Bulk).await;
    assert_eq!(
        (bulk_read, mock.state.stats().received),
        (10, 0),
        "the tx entry was read while bulk's pool was still full, its sends unanswered"
    );
    eventually("the tx email is sent", WAIT, || async {
        (status_of(&pg, tx).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    w.stop().await;
}

/// Across the cluster (`lua/ratelimit.lua`): one worker's bulk sends keep a provider's window
/// full; tx sends on another worker take the permits that free next, before any of the bulk
/// sends that were waiting longer. First come first served at Redis, the bulk sends (asking
/// at the same instants) took about half of them.
#[tokio::test]
async fn the_cluster_window_serves_tx_sends_on_one_worker_before_bulk_sends_on_another() {
    let redis = TestRedis::new();
    let l = Limit {
        limit: 20,
        window_ms: 1000,
        tenant_limit: None,
        margin_ms: 0,
        cold_margin_ms: 0,
        spread_ms: 0,
    };
    let name = format!("cluster-{}", uuid::Uuid::now_v7().simple());
    // The window fills over half a second, so its permits free one by one, 25 ms apart.
    {
        let keys = mailfleet::ratelimit::Keys::new(redis.keys.prefix(), &name, None);
        let mut conn = redis.pool.get().await.unwrap();
        for _ in 0..20 {
            let (g, _) = mailfleet::ratelimit::take(&mut conn, &keys, &l, 0, 1, None)
                .await
                .unwrap();
            assert_eq!(g, 1);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let done: Arc<Mutex<Vec<Lane>>> = Arc::default();
    let spawn = |limiter: &Arc<Limiter>, lane: Lane| acquire(limiter, &name, l, &done, lane);
    let bulk_worker = Arc::new(Limiter::new(redis.pool.clone(), redis.keys.prefix()));
    let tx_worker = Arc::new(Limiter::new(redis.pool.clone(), redis.keys.prefix()));
    let bulk: Vec<_> = (0..40).map(|_| spawn(&bulk_worker, Lane::Bulk)).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tx: Vec<_> = (0..10).map(|_| spawn(&tx_worker, Lane::Tx)).collect();
    for t in tx {
        t.await.unwrap();
    }
    let order = done.lock().unwrap().clone();
    let bulk_first = order.iter().filter(|l| **l == Lane::Bulk).count();
    assert!(
        bulk_first <= 1,
        "{bulk_first} bulk sends got permits before the last of 10 tx sends: {order:?}"
    );
    for b in bulk {
        b.abort();
    }
}

/// Hold every bulk statement that matches `held` (a condition on the trigger's `NEW` row) on a
/// lock, until at least `waiters` statements wait on it; then a tx email must still be
/// claimed, sent and recorded, and nothing of bulk is.
async fn tx_goes_past_held_bulk_statements(pg: PgPool, held: &str, waiters: i64) {
    sqlx::query(&format!(
        "CREATE FUNCTION hold_bulk() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.lane = 'bulk' AND {held} THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
           RETURN NEW;
         END $$"
    ))
    .execute(&pg)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER hold_bulk BEFORE INSERT OR UPDATE ON emails
         FOR EACH ROW EXECUTE FUNCTION hold_bulk()",
    )
    .execute(&pg)
    .await
    .unwrap();
    let mut holder = pg.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *holder)
        .await
        .unwrap();

    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.batch_size = 1;
    // Bulk's room at its ceiling from the start: adapting, it holds a batch (here one entry)
    // until tx is known to be quiet, and the held statements never finish to tell it.
    s.adaptive_in_flight = false;
    // The worker's main pool: two connections, soon waiting inside held bulk statements.
    let small = mailfleet::store::companion(&pg, 2);
    let w = TestWorker::start(&small, &redis, &mock.url, s).await;
    for i in 0..6 {
        redis
            .enqueue(job(Lane::Bulk, &format!("b{i}@example.com")))
            .await;
    }
    eventually("bulk statements wait on the lock", WAIT, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&pg)
        .await
        .unwrap();
        (waiting >= waiters).then_some(())
    })
    .await;
    let tx = redis.enqueue(job(Lane::Tx, "reset@example.com")).await;
    eventually("the tx email is sent and recorded", WAIT, || async {
        (status_of(&pg, tx).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    assert_eq!(
        count_status(&pg, "sent").await,
        1,
        "bulk stayed held behind the lock"
    );
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *holder)
        .await
        .unwrap();
    eventually("bulk goes on once the lock is released", WAIT, || async {
        (count_status(&pg, "sent").await == 7).then_some(())
    })
    .await;
    w.stop().await;
}

/// Postgres connections: bulk claims hold every connection of the main pool; tx has its own.
/// With one pool the tx claim waited for the lock's release.
#[sqlx::test(migrations = "./migrations")]
async fn a_tx_email_is_claimed_while_bulk_claims_hold_every_connection(pg: PgPool) {
    tx_goes_past_held_bulk_statements(pg, "true", 2).await;
}

/// The recorder: bulk's record statement waits inside Postgres; tx outcomes have their own
/// recorder. With one recorder the tx outcome waited behind the bulk flush.
#[sqlx::test(migrations = "./migrations")]
async fn a_tx_outcome_is_recorded_while_a_bulk_record_statement_waits(pg: PgPool) {
    tx_goes_past_held_bulk_statements(pg, "NEW.status = 'sent'", 1).await;
}

/// The runtime: a task holds the worker's main runtime (this test's one thread) for 200 ms at
/// a time, as hundreds of ready bulk tasks do on a saturated machine. The tx email is read,
/// claimed, sent, recorded and acked on the tx lane's own runtime thread, over connections
/// that thread drives, so it needs none of the main runtime's turns. When the tx lane shared
/// the runtime, each of those steps waited for a turn: at least one per step. The provider
/// and the app server that enqueues run on a thread of their own, as they would elsewhere.
#[sqlx::test(migrations = "./migrations")]
async fn a_tx_email_goes_through_while_the_main_runtime_is_held(pg: PgPool) {
    type Stamp = chrono::DateTime<chrono::Utc>;
    let redis = TestRedis::new();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (enqueue, mut to_enqueue) = tokio::sync::mpsc::unbounded_channel::<mailfleet::NewJob>();
    let (done_tx, done) = std::sync::mpsc::channel::<(uuid::Uuid, Stamp)>();
    let (redis_url, keys) = (redis.url.clone(), redis.keys.clone());
    let elsewhere = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mock = TestMock::start(MockConfig::default()).await;
            url_tx.send(mock.url.clone()).expect("url");
            let pool =
                mailfleet::stream::pool(&redis_url, Duration::from_secs(5), 2).expect("pool");
            let producer = mailfleet::Producer::from_pool(pool, keys);
            while let Some(job) = to_enqueue.recv().await {
                let id = producer.send(job).await.expect("enqueue").id.as_uuid();
                let _ = done_tx.send((id, chrono::Utc::now()));
            }
        });
    });
    let mock_url = url_rx.recv().expect("the mock's url");
    let w = TestWorker::start(&pg, &redis, &mock_url, settings()).await;
    let enqueued = |to: &str| {
        enqueue
            .send(job(Lane::Tx, to))
            .expect("the producer thread");
        done.recv().expect("enqueued")
    };
    // Warm: tx's connections to the provider open before the measured email.
    let (first, _) = enqueued("first@example.com");
    eventually("the first tx email is sent", WAIT, || async {
        (status_of(&pg, first).await.as_deref() == Some("sent")).then_some(())
    })
    .await;

    let turns = Arc::new(Mutex::new(Vec::<Stamp>::new()));
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hog = {
        let (turns, holding) = (turns.clone(), holding.clone());
        tokio::spawn(async move {
            while holding.load(std::sync::atomic::Ordering::SeqCst) {
                // Blocks the runtime's only thread, as a long poll would.
                std::thread::sleep(Duration::from_millis(200));
                turns.lock().unwrap().push(chrono::Utc::now());
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::task::yield_now().await;
    let (tx, in_stream) = enqueued("reset@example.com");
    eventually("the tx email is sent", WAIT, || async {
        (status_of(&pg, tx).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    holding.store(false, std::sync::atomic::Ordering::SeqCst);
    hog.await.unwrap();
    let recorded: Stamp = sqlx::query_scalar("SELECT recorded_at FROM emails WHERE id = $1")
        .bind(tx)
        .fetch_one(&pg)
        .await
        .unwrap();
    let held = turns
        .lock()
        .unwrap()
        .iter()
        .filter(|&&t| t > in_stream && t < recorded)
        .count();
    // None when the tx thread runs promptly, one or two on a busy machine. Sharing the
    // runtime took one per step (read, claim, suppressions, send, record): five or more.
    assert!(
        held <= 2,
        "the tx email waited through {held} of the main runtime's 200 ms turns"
    );
    w.stop().await;
    drop(enqueue);
    elsewhere.join().unwrap();
}

/// Tx's own Redis connections are enough for any partition count: every tx reader keeps one
/// (12 here), and the recorder still gets one for the acks. With a fixed 8, the readers of
/// the last partitions waited for a connection forever and every ack with them.
#[sqlx::test(migrations = "./migrations")]
async fn every_tx_entry_is_acked_when_the_partitions_outnumber_a_fixed_pool(pg: PgPool) {
    let redis = TestRedis::partitioned(12);
    let mock = TestMock::start(MockConfig::default()).await;
    let w = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    for i in 0..48 {
        redis
            .enqueue(job(Lane::Tx, &format!("t{i}@example.com")))
            .await;
    }
    let used = eventually("every tx entry is read and acked", WAIT, || async {
        let mut conn = redis.conn().await;
        let (mut added, mut read, mut pending, mut streams) = (0i64, 0i64, 0i64, 0);
        for p in 0..12 {
            let len: i64 = redis::cmd("XLEN")
                .arg(redis.keys.lane(p, Lane::Tx))
                .query_async(&mut *conn)
                .await
                .unwrap();
            if len > 0 {
                streams += 1;
                let (r, open) = redis.group_progress_of(p, Lane::Tx).await;
                (added, read, pending) = (added + len, read + r, pending + open);
            }
        }
        (read == added && pending == 0 && count_status(&pg, "sent").await == 48).then_some(streams)
    })
    .await;
    assert!(used > 8, "the emails span {used} partitions");
    w.stop().await;
}
