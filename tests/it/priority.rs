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
    let spawn = |lane: Lane| {
        let (limiter, name, done) = (limiter.clone(), name.clone(), done.clone());
        tokio::spawn(async move {
            limiter
                .acquire(&name, &l, None, lane)
                .await
                .expect("a permit");
            done.lock().unwrap().push(lane);
        })
    };
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
