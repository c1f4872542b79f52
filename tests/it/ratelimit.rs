//! lua/ratelimit.lua and its client: exact under concurrency, sliding, partial grants with
//! the right wait, tenant windows, cluster back-off, batching; and two workers held under a
//! provider's limit as the mock counts it.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::config::{Limit, SendConfig};
use mailfleet::mock::{MockConfig, RateLimit};
use mailfleet::ratelimit::{Ask, Keys, Limiter, call, take};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

fn limit(n: u32, window_ms: u64) -> Limit {
    Limit {
        limit: n,
        window_ms,
        tenant_limit: None,
        margin_ms: 0,
        cold_margin_ms: 0,
        spread_ms: 0,
    }
}

/// A worker whose stock of permits grew too old gives them back with its next call: they
/// were never used, so they leave the provider's and the tenant's window, and the room is
/// granted again. Giving back numbers already gone frees nothing more.
#[tokio::test]
async fn permits_given_back_unused_free_their_room_in_every_window() {
    let redis = TestRedis::new();
    let keys = Keys::new(redis.keys.prefix(), "giveback", Some("acme"));
    let l = Limit {
        tenant_limit: Some(10),
        ..limit(10, 30_000)
    };
    let ask = |n, give_back| Ask {
        n,
        margin_ms: 0,
        give_back,
        backoff: None,
        lane: Lane::Bulk,
        asker: 1,
    };
    let mut conn = redis.pool.get().await.unwrap();
    let g = call(&mut conn, &keys, &l, &ask(10, None)).await.unwrap();
    assert_eq!((g.granted, g.last), (10, 10));
    let g = call(&mut conn, &keys, &l, &ask(1, None)).await.unwrap();
    assert_eq!(g.granted, 0, "both windows are full");
    assert!(g.wait > Duration::ZERO);
    // Permits 7..=10 went unused.
    let g = call(&mut conn, &keys, &l, &ask(6, Some((7, 10))))
        .await
        .unwrap();
    assert_eq!((g.granted, g.last), (4, 14), "exactly the room given back");
    for key in [&keys.window, keys.tenant.as_ref().unwrap()] {
        let n: i64 = redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, 10, "{key}");
    }
    let g = call(&mut conn, &keys, &l, &ask(1, Some((7, 10))))
        .await
        .unwrap();
    assert_eq!(g.granted, 0, "numbers given back twice free nothing twice");
}

fn ask(lane: Lane, n: usize, asker: u64) -> Ask {
    Ask {
        n,
        margin_ms: 0,
        give_back: None,
        backoff: None,
        lane,
        asker,
    }
}

async fn window_count(conn: &mut mailfleet::stream::conn::Connection, keys: &Keys) -> i64 {
    redis::cmd("ZCARD")
        .arg(&keys.window)
        .query_async(&mut **conn)
        .await
        .unwrap()
}

/// The two-class window: with no tx demand bulk may fill the window; once a tx ask was made,
/// bulk leaves a headroom (ceil(limit / 200), at least 1) that tx takes at once, and tx may
/// fill the window to the limit, never past it.
#[tokio::test]
async fn bulk_leaves_headroom_while_tx_demand_exists_and_tx_fills_the_window_exactly() {
    let redis = TestRedis::new();
    let mut conn = redis.pool.get().await.unwrap();
    let l = limit(10, 30_000);
    let quiet = Keys::new(redis.keys.prefix(), "two-class-quiet", None);
    let g = call(&mut conn, &quiet, &l, &ask(Lane::Bulk, 20, 1))
        .await
        .unwrap();
    assert_eq!(
        g.granted, 10,
        "without tx demand bulk takes the whole window"
    );

    let keys = Keys::new(redis.keys.prefix(), "two-class", None);
    let g = call(&mut conn, &keys, &l, &ask(Lane::Tx, 1, 1))
        .await
        .unwrap();
    assert_eq!(g.granted, 1);
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 20, 2))
        .await
        .unwrap();
    assert_eq!(g.granted, 8, "bulk fills the window to the limit less one");
    assert!(g.wait > Duration::ZERO);
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 1, 2))
        .await
        .unwrap();
    assert_eq!(g.granted, 0, "the headroom is not bulk's");
    let g = call(&mut conn, &keys, &l, &ask(Lane::Tx, 5, 1))
        .await
        .unwrap();
    assert_eq!(
        g.granted, 1,
        "tx takes the headroom, and nothing past the limit"
    );
    assert!(
        g.wait > Duration::ZERO,
        "a short tx grant says when to ask again"
    );
    assert_eq!(window_count(&mut conn, &keys).await, 10);
}

/// A tx ask granted short records what it still wants; until it is served, bulk asks from
/// any worker leave that much room too, so the permits that free go to tx first.
#[tokio::test]
async fn permits_that_free_while_tx_waits_are_left_for_tx() {
    let redis = TestRedis::new();
    let mut conn = redis.pool.get().await.unwrap();
    let l = limit(10, 400);
    let keys = Keys::new(redis.keys.prefix(), "tx-waits", None);
    // Bulk fills the window before any tx demand.
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 10, 2))
        .await
        .unwrap();
    assert_eq!(g.granted, 10);
    // Three tx sends on another worker want permits: none is free.
    let g = call(&mut conn, &keys, &l, &ask(Lane::Tx, 3, 1))
        .await
        .unwrap();
    assert_eq!(g.granted, 0);
    // The whole window leaves at once.
    tokio::time::sleep(g.wait).await;
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 20, 2))
        .await
        .unwrap();
    assert_eq!(
        g.granted, 6,
        "bulk leaves the headroom (1) and the three waiting tx permits"
    );
    let g = call(&mut conn, &keys, &l, &ask(Lane::Tx, 3, 1))
        .await
        .unwrap();
    assert_eq!(g.granted, 3, "the waiting tx sends find their room");
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 20, 2))
        .await
        .unwrap();
    assert_eq!(
        g.granted, 0,
        "served tx no longer holds room, the headroom still does"
    );
    assert_eq!(window_count(&mut conn, &keys).await, 9);
}

/// With a limit so small the headroom is the whole window, bulk waits while tx demand lasts
/// and is told to come back when it ends, not in a millisecond.
#[tokio::test]
async fn bulk_held_back_by_tx_demand_is_told_when_the_demand_ends() {
    let redis = TestRedis::new();
    let mut conn = redis.pool.get().await.unwrap();
    let l = limit(1, 250);
    let keys = Keys::new(redis.keys.prefix(), "tiny", None);
    let g = call(&mut conn, &keys, &l, &ask(Lane::Tx, 1, 1))
        .await
        .unwrap();
    assert_eq!(g.granted, 1);
    let g = call(&mut conn, &keys, &l, &ask(Lane::Bulk, 1, 2))
        .await
        .unwrap();
    assert_eq!(g.granted, 0);
    assert!(
        g.wait >= Duration::from_millis(300) && g.wait <= Duration::from_millis(501),
        "the demand lasts two windows: {:?}",
        g.wait
    );
}

/// Exactness holds for both classes together: tx and bulk callers racing never get more
/// than the limit in a window between them.
#[tokio::test]
async fn tx_and_bulk_callers_together_never_get_more_than_the_limit() {
    let redis = TestRedis::new();
    let keys = Keys::new(redis.keys.prefix(), "exact-two-class", None);
    let l = limit(100, 30_000);
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let pool = redis.pool.clone();
        let keys = keys.clone();
        let lane = if i % 2 == 0 { Lane::Tx } else { Lane::Bulk };
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get().await.expect("conn");
            let mut got = 0;
            let mut refused = 0;
            // Bulk may be refused while the window still has the headroom: stop after a few
            // refusals in a row.
            while refused < 3 {
                let g = call(&mut conn, &keys, &l, &ask(lane, 7, i))
                    .await
                    .expect("call");
                got += g.granted;
                refused = if g.granted == 0 { refused + 1 } else { 0 };
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(
        total, 100,
        "tx fills what bulk left; never more than the limit"
    );
}

#[tokio::test]
async fn concurrent_callers_never_get_more_than_the_limit_in_a_window() {
    let redis = TestRedis::new();
    let keys = Keys::new(redis.keys.prefix(), "exact", None);
    let l = limit(100, 30_000);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let pool = redis.pool.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get().await.expect("conn");
            let mut got = 0;
            loop {
                let (g, wait) = take(&mut conn, &keys, &l, l.margin_ms, 7, None)
                    .await
                    .expect("take");
                assert!(g <= 7, "never more than asked");
                got += g;
                if g < 7 {
                    assert!(
                        wait > Duration::ZERO && wait <= Duration::from_millis(30_001),
                        "a short grant says how long to wait: {wait:?}"
                    );
                }
                if g == 0 {
                    return got;
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 100, "exactly the limit, across every caller");
}

#[tokio::test]
async fn the_window_slides_partial_grants_come_with_the_wait_for_the_next_permit() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let keys = Keys::new(redis.keys.prefix(), "slide", None);
    let l = limit(10, 300);
    assert_eq!(
        take(&mut conn, &keys, &l, l.margin_ms, 7, None)
            .await
            .unwrap()
            .0,
        7
    );
    // The next grants come later, so they leave the window later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (g, wait) = take(&mut conn, &keys, &l, l.margin_ms, 7, None)
        .await
        .unwrap();
    assert_eq!(g, 3, "only what is left");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(201),
        "the first permits leave first: {wait:?}"
    );
    let (g, wait) = take(&mut conn, &keys, &l, l.margin_ms, 1, None)
        .await
        .unwrap();
    assert_eq!(g, 0);
    // Once the wait is over, the first permits have left the window.
    tokio::time::sleep(wait).await;
    let (g, _) = take(&mut conn, &keys, &l, l.margin_ms, 10, None)
        .await
        .unwrap();
    assert_eq!(
        g, 7,
        "the first 7 left the window; the later 3 are still in it"
    );
}

#[tokio::test]
async fn a_tenant_window_caps_its_tenant_inside_the_providers_window() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let l = Limit {
        tenant_limit: Some(3),
        ..limit(10, 30_000)
    };
    let a = Keys::new(redis.keys.prefix(), "tenants", Some("a"));
    let b = Keys::new(redis.keys.prefix(), "tenants", Some("b"));
    assert_eq!(
        take(&mut conn, &a, &l, l.margin_ms, 5, None)
            .await
            .unwrap()
            .0,
        3
    );
    assert_eq!(
        take(&mut conn, &a, &l, l.margin_ms, 1, None)
            .await
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        take(&mut conn, &b, &l, l.margin_ms, 3, None)
            .await
            .unwrap()
            .0,
        3
    );
    let c = Keys::new(redis.keys.prefix(), "tenants", Some("c"));
    let d = Keys::new(redis.keys.prefix(), "tenants", Some("d"));
    assert_eq!(
        take(&mut conn, &c, &l, l.margin_ms, 3, None)
            .await
            .unwrap()
            .0,
        3
    );
    assert_eq!(
        take(&mut conn, &d, &l, l.margin_ms, 3, None)
            .await
            .unwrap()
            .0,
        1,
        "the provider's window is shared by every tenant"
    );
}

#[tokio::test]
async fn the_spread_rule_hands_a_window_out_in_parts() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let keys = Keys::new(redis.keys.prefix(), "spread", None);
    let l = Limit {
        spread_ms: 100,
        ..limit(100, 1000)
    };
    let (g, wait) = take(&mut conn, &keys, &l, l.margin_ms, 50, None)
        .await
        .unwrap();
    assert_eq!(g, 10, "a tenth of the window's permits in a tenth of it");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(101),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    let (g, _) = take(&mut conn, &keys, &l, l.margin_ms, 50, None)
        .await
        .unwrap();
    assert_eq!(
        g, 10,
        "the next part, once the first left the spread window"
    );
}

#[tokio::test]
async fn a_back_off_holds_every_caller_until_it_ends() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let keys = Keys::new(redis.keys.prefix(), "backoff", None);
    let l = limit(1000, 1000);
    take(
        &mut conn,
        &keys,
        &l,
        l.margin_ms,
        1,
        Some(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let (g, wait) = take(&mut conn, &keys, &l, l.margin_ms, 5, None)
        .await
        .unwrap();
    assert_eq!(g, 0, "nothing during the back-off");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(400),
        "{wait:?}"
    );
    // A shorter back-off never shortens a longer one.
    take(
        &mut conn,
        &keys,
        &l,
        l.margin_ms,
        1,
        Some(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    assert!(
        take(&mut conn, &keys, &l, l.margin_ms, 1, None)
            .await
            .unwrap()
            .1
            > Duration::from_millis(10)
    );
    tokio::time::sleep(wait).await;
    assert_eq!(
        take(&mut conn, &keys, &l, l.margin_ms, 5, None)
            .await
            .unwrap()
            .0,
        5
    );
}

#[tokio::test]
async fn the_client_serves_a_batch_of_sends_with_few_calls() {
    let redis = TestRedis::new();
    let limiter = Arc::new(Limiter::new(redis.pool.clone(), redis.keys.prefix()));
    let l = Limit {
        margin_ms: 20,
        cold_margin_ms: 20,
        ..limit(10_000, 1000)
    };
    let name = format!("batching-{}", uuid::Uuid::now_v7().simple());
    let before = metric(
        &mailfleet::metrics::render(),
        &format!("mailfleet_ratelimit_calls_total{{provider=\"{name}\"}}"),
    )
    .unwrap_or(0.0);
    let sends = (0..300).map(|_| {
        let limiter = limiter.clone();
        let name = name.clone();
        async move {
            limiter
                .acquire(&name, &l, None, mailfleet::Lane::Bulk)
                .await
        }
    });
    for r in futures::future::join_all(sends).await {
        r.expect("a permit");
    }
    let calls = metric(
        &mailfleet::metrics::render(),
        &format!("mailfleet_ratelimit_calls_total{{provider=\"{name}\"}}"),
    )
    .unwrap_or(0.0)
        - before;
    assert!((1.0..=5.0).contains(&calls), "300 permits in {calls} calls");
    let mut conn = redis.conn().await;
    let used: u64 = redis::cmd("ZCARD")
        .arg(Keys::new(redis.keys.prefix(), &name, None).window)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(used, 300, "every permit is counted once in the window");
}

#[sqlx::test(migrations = "./migrations")]
async fn two_workers_stay_under_the_providers_limit_as_the_provider_counts_it(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        rate_limit: Some(RateLimit {
            limit: 40,
            window: Duration::from_millis(500),
        }),
        ..MockConfig::default()
    })
    .await;
    let mut p = provider_config(&mock.url);
    p.name = format!("rl-{}", uuid::Uuid::now_v7().simple());
    p.limit = Some(Limit {
        limit: 40,
        window_ms: 500,
        tenant_limit: None,
        margin_ms: 25,
        cold_margin_ms: 25,
        spread_ms: 50,
    });
    let cfg = SendConfig::of(vec![p]);
    let w1 = TestWorker::start_config(&pg, &redis, &redis.url, cfg.clone(), settings()).await;
    let w2 = TestWorker::start_config(&pg, &redis, &redis.url, cfg, settings()).await;
    for i in 0..200 {
        redis
            .enqueue(job(Lane::Tx, &format!("r{i}@example.com")))
            .await;
    }
    eventually("all 200 sent", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'sent'")
            .fetch_one(&pg)
            .await
            .unwrap();
        (n == 200).then_some(())
    })
    .await;
    let s = mock.state.stats();
    assert_eq!(s.rate_limited, 0, "the provider never had to say 429");
    assert!(
        s.max_window_count <= 40,
        "at most 40 in any 500 ms: {}",
        s.max_window_count
    );
    assert_eq!(s.unique, 200);
    w1.stop().await;
    w2.stop().await;
}
