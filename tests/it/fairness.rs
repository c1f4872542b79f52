//! Fair bulk across tenants: each tenant's bulk waits on its own stream, and the read walks the
//! ring of tenants with a backlog (lua/read.lua, docs/fairness.md). These tests would fail if a
//! tenant's backlog were served first come, first served, if a drained tenant stayed in the
//! ring, or if a tenant stream's entries escaped reclaim, retries or the delayed set.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use mailfleet::producer::NewJob;
use mailfleet::scripts::{self, PROMOTE, RETRY};
use mailfleet::stream::{GROUP, Source, consumer};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

fn bulk_of(tenant: Option<&str>, to: &str) -> NewJob {
    let mut p = serde_json::json!({
        "to": [to], "from": "Shop <shop@example.com>", "subject": "Hello", "text": "Hi there"
    });
    if let Some(t) = tenant {
        p["tenant"] = t.into();
    }
    NewJob {
        lane: Lane::Bulk,
        idempotency_key: None,
        payload: serde_json::from_value(p).expect("payload"),
    }
}

async fn enqueue_bulk(redis: &TestRedis, tenant: Option<&str>, n: usize) {
    let jobs = (0..n)
        .map(|i| {
            bulk_of(
                tenant,
                &format!("{}-{i}@example.com", tenant.unwrap_or("none")),
            )
        })
        .collect();
    redis.producer().send_many(jobs).await.expect("enqueue");
}

/// Entries read per tenant stream (`""`: the shared bulk stream).
fn by_tenant(entries: &[mailfleet::stream::RawEntry]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in entries {
        let t = e.stream_tenant.as_deref().unwrap_or("").to_owned();
        *m.entry(t).or_insert(0) += 1;
    }
    m
}

async fn ring(redis: &TestRedis) -> Vec<(String, f64)> {
    redis::cmd("ZRANGE")
        .arg(redis.keys.bulk_ring(0))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap()
}

async fn exists(redis: &TestRedis, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut *redis.conn().await)
        .await
        .unwrap()
        == 1
}

async fn read(redis: &TestRedis, n: usize) -> Vec<mailfleet::stream::RawEntry> {
    consumer::read_now(&mut *redis.conn().await, &redis.keys, 0, "c1", n, &[])
        .await
        .unwrap()
}

/// Ack (and delete, as the recorder does) every entry read.
async fn finish(redis: &TestRedis, entries: &[mailfleet::stream::RawEntry]) {
    let mut f = consumer::Finish::default();
    for e in entries {
        f.ack(e.source(), e.entry_id.clone());
    }
    f.execute(&mut *redis.conn().await, &redis.keys)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_big_backlog_does_not_hold_back_a_tenant_that_enqueued_later() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("big"), 600).await;
    enqueue_bulk(&redis, None, 40).await;
    for t in ["s1", "s2", "s3"] {
        enqueue_bulk(&redis, Some(t), 40).await;
    }
    // First come, first served would read 160 of "big"; the fair read gives each of the five
    // streams its quantum in turn.
    let got = read(&redis, 160).await;
    assert_eq!(got.len(), 160);
    let m = by_tenant(&got);
    for t in ["", "s1", "s2", "s3"] {
        assert!(
            m.get(t).copied().unwrap_or(0) >= 24,
            "{t:?} got less than its share of 160 among five streams: {m:?}"
        );
    }
    assert!(m["big"] <= 40, "big took more than its share: {m:?}");
    // Once the small ones drain, big alone gets every read (work-conserving).
    finish(&redis, &got).await;
    let mut rest = Vec::new();
    loop {
        let r = read(&redis, 100).await;
        if r.is_empty() {
            break;
        }
        finish(&redis, &r).await;
        rest.extend(r);
    }
    let m = by_tenant(&rest);
    assert_eq!(m["big"] + by_tenant(&got)["big"], 600, "{m:?}");
    // Every drained tenant stream is gone, with its place in the ring: the ring holds only
    // the shared stream.
    for t in ["big", "s1", "s2", "s3"] {
        assert!(
            !exists(&redis, &redis.keys.tenant_stream(0, t)).await,
            "{t} left behind"
        );
    }
    let members: Vec<String> = ring(&redis).await.into_iter().map(|(m, _)| m).collect();
    assert_eq!(members, vec![String::new()]);
}

#[tokio::test]
async fn weights_split_a_shared_backlog_in_their_ratio() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("gold"), 800).await;
    enqueue_bulk(&redis, Some("free"), 800).await;
    redis::cmd("HSET")
        .arg(redis.keys.bulk_weights(0))
        .arg("gold")
        .arg(3)
        .query_async::<i64>(&mut *redis.conn().await)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..8 {
        let r = read(&redis, 100).await;
        got.extend(r);
    }
    let m = by_tenant(&got);
    let share = m["gold"] as f64 / got.len() as f64;
    assert!(
        (share - 0.75).abs() <= 0.075,
        "gold (weight 3) against free (weight 1) got {share:.3} of {}: {m:?}",
        got.len()
    );
}

#[tokio::test]
async fn a_tenant_in_flight_keeps_its_stream_and_a_returning_one_joins_at_the_front_time() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("a"), 20).await;
    let first = read(&redis, 20).await;
    assert_eq!(by_tenant(&first)["a"], 20);
    // Every entry is read but none acked: the stream stays (reclaim needs its group), and more
    // of a's email joins it without a new ring entry.
    assert!(read(&redis, 20).await.is_empty());
    let key = redis.keys.tenant_stream(0, "a");
    assert!(
        exists(&redis, &key).await,
        "an in-flight tenant's stream was deleted"
    );
    finish(&redis, &first).await;
    assert!(read(&redis, 20).await.is_empty());
    assert!(!exists(&redis, &key).await, "a drained stream stayed");
    // b has been served a lot; a returning tenant starts at the ring's lowest time, neither
    // ahead of b by its history nor behind it.
    enqueue_bulk(&redis, Some("b"), 300).await;
    let b = read(&redis, 200).await;
    finish(&redis, &b).await;
    enqueue_bulk(&redis, Some("a"), 50).await;
    let next = read(&redis, 64).await;
    let m = by_tenant(&next);
    assert!(
        m.get("a").copied().unwrap_or(0) >= 16 && m.get("b").copied().unwrap_or(0) >= 16,
        "a returning tenant and a busy one should alternate: {m:?}"
    );
}

#[tokio::test]
async fn reclaim_finds_a_crashed_consumers_tenant_entries_only_once_they_can_be_idle() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("t1"), 5).await;
    enqueue_bulk(&redis, Some("t2"), 5).await;
    let got = consumer::read_now(&mut *redis.conn().await, &redis.keys, 0, "dead", 10, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    // t2's entries are acked: only t1 can hold a crashed consumer's work.
    let t2: Vec<_> = got
        .iter()
        .filter(|e| e.stream_tenant.as_deref() == Some("t2"))
        .cloned()
        .collect();
    finish(&redis, &t2).await;
    let due = |min_idle: u64| {
        let redis = &redis;
        async move {
            consumer::reclaim_due(
                &mut *redis.conn().await,
                &redis.keys,
                0,
                min_idle,
                min_idle,
                10,
            )
            .await
            .unwrap()
        }
    };
    assert!(
        due(60_000).await.is_empty(),
        "nothing can be idle a minute yet"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = due(200).await;
    assert_eq!(
        found,
        vec![(
            Source {
                partition: 0,
                lane: Lane::Bulk,
                tenant: Some("t1".into())
            },
            5
        )],
        "t2 has nothing pending; t1 has its 5"
    );
    let sources: Vec<Source> = found.into_iter().map(|(s, _)| s).collect();
    let r = consumer::reclaim(
        &mut *redis.conn().await,
        &redis.keys,
        &sources[0],
        "alive",
        200,
        "0-0",
        10,
        10,
    )
    .await
    .unwrap();
    assert_eq!(r.entries.len(), 5);
    assert!(
        r.entries
            .iter()
            .all(|e| e.stream_tenant.as_deref() == Some("t1")),
        "reclaimed entries are acked on their own stream"
    );
    // Just claimed: not due again until they could be idle again.
    assert!(due(200).await.is_empty());
    finish(&redis, &r.entries).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(due(200).await.is_empty(), "nothing left pending");
    let held: i64 = redis::cmd("ZCARD")
        .arg(redis.keys.bulk_held(0))
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(held, 0, "a stream with nothing pending leaves the held set");
}

#[tokio::test]
async fn a_tenant_retry_goes_back_to_its_stream_and_scripts_on_a_drained_stream_do_nothing() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("t"), 2).await;
    let got = read(&redis, 2).await;
    let max = 1 << 20;
    let job = mailfleet::stream::wire::decode(&got[0], max).unwrap();
    let member = mailfleet::stream::wire::delayed_member(&job);
    let source = got[0].source();
    let key = redis.keys.source(&source);
    let mut f = consumer::Finish::default();
    f.retry(source.clone(), got[0].entry_id.clone(), 0, member);
    f.ack(source.clone(), got[1].entry_id.clone());
    f.execute(&mut *redis.conn().await, &redis.keys)
        .await
        .unwrap();
    assert_eq!(redis.xlen(&key).await, 0, "acked entries are deleted");
    // Drained: the next read deletes it and the tenant leaves the ring.
    assert!(read(&redis, 2).await.is_empty());
    assert!(!exists(&redis, &key).await);
    // A late retry, dead letter or touch for the gone stream is a no-op, not an error.
    let mut conn = redis.conn().await;
    let mut c = RETRY.call(&[&redis.keys.delayed(0), &key]);
    c.arg(GROUP).arg(&got[1].entry_id).arg(0).arg("m");
    assert_eq!(
        redis::from_redis_value::<i64>(scripts::run_one(&mut *conn, c).await.unwrap()).unwrap(),
        0
    );
    let mut live = std::collections::BTreeMap::new();
    live.insert(source.clone(), vec![got[1].entry_id.clone()]);
    assert_eq!(
        consumer::touch(&mut *conn, &redis.keys, "c1", &live)
            .await
            .unwrap(),
        0
    );
    // Promotion brings the retry back to t's stream, which rejoins the ring.
    let mut p = PROMOTE.call(&[
        &redis.keys.delayed(0),
        &redis.keys.lane(0, Lane::Tx),
        &redis.keys.lane(0, Lane::Bulk),
        &redis.keys.delayed_tx(0),
        &redis.keys.bulk_ring(0),
        &redis.keys.bulk_bell(0),
    ]);
    p.arg(10).arg(redis.keys.tenant_stream_prefix(0)).arg(GROUP);
    let moved: i64 =
        redis::from_redis_value(scripts::run_one(&mut *conn, p).await.unwrap()).unwrap();
    assert_eq!(moved, 1);
    drop(conn);
    assert_eq!(redis.xlen(&key).await, 1);
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await, 0);
    let again = read(&redis, 2).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].stream_tenant.as_deref(), Some("t"));
    assert_eq!(again[0].job_id(), Some(job.id));
}

/// End to end: tenants' bulk through real workers is sent once each, every tenant stream is
/// gone afterwards, and a worker killed while holding tenant entries has them reclaimed.
#[sqlx::test]
async fn tenant_bulk_is_sent_once_each_through_a_crash_and_leaves_no_stream_behind(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let mock = TestMock::start(MockConfig::default()).await;
    for t in ["a", "b", "c"] {
        enqueue_bulk(&redis, Some(t), 30).await;
    }
    enqueue_bulk(&redis, None, 30).await;
    // A consumer reads tenant entries and dies holding them.
    let held = read_and_die(&redis, Lane::Bulk, 40).await;
    assert_eq!(held.len(), 40);
    let mut s = settings();
    s.visibility_timeout_ms = 1500;
    s.reclaim_interval_ms = 100;
    let w = TestWorker::start(&pg, &redis, &mock.url, s).await;
    eventually("every email sent", WAIT, || async {
        (count_status(&pg, "sent").await == 120).then_some(())
    })
    .await;
    eventually("every tenant stream drained and gone", WAIT, || async {
        let mut gone = true;
        for t in ["a", "b", "c"] {
            gone &= !exists(&redis, &redis.keys.tenant_stream(0, t)).await;
        }
        gone.then_some(())
    })
    .await;
    w.stop().await;
    let counts = mock.state.counts();
    assert_eq!(counts.len(), 120);
    assert!(counts.values().all(|&n| n == 1), "sent twice: {counts:?}");
}

#[tokio::test]
async fn a_bulk_reader_blocked_on_an_idle_partition_wakes_when_a_tenant_joins() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let mut blocking = mailfleet::stream::blocking_connection(
        &redis.url,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let keys = redis.keys.clone();
    // A minute-long block: without the ring's bell only the timeout would end it.
    let reader = tokio::spawn(async move {
        consumer::read_blocking(&mut blocking, &keys, 0, "c1", 10, 60_000, &[Lane::Tx]).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    enqueue_bulk(&redis, Some("newcomer"), 3).await;
    let woke = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the blocked read was not woken by the tenant joining")
        .unwrap()
        .unwrap();
    assert!(woke.is_empty(), "the bell is not a job");
    let got = read(&redis, 10).await;
    assert_eq!(by_tenant(&got)["newcomer"], 3);
    // The ring was acked: a second blocking read does not wake for it again.
    let mut blocking = mailfleet::stream::blocking_connection(
        &redis.url,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let again = consumer::read_blocking(&mut blocking, &redis.keys, 0, "c1", 10, 100, &[Lane::Tx])
        .await
        .unwrap();
    assert!(again.is_empty());
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(redis.keys.bulk_bell(0))
        .arg(GROUP)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))),
        "{pending:?}"
    );
}

#[tokio::test]
async fn depth_counts_tenant_streams_in_bulk_and_names_the_busiest_tenants() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("huge"), 300).await;
    enqueue_bulk(&redis, Some("small"), 60).await;
    enqueue_bulk(&redis, None, 5).await;
    let got = read(&redis, 64).await;
    let m = by_tenant(&got);
    let d = mailfleet::stream::depth::read(&mut *redis.conn().await, &redis.keys, None)
        .await
        .unwrap();
    let t = &d.tenants;
    assert_eq!(t.active, 2, "the shared stream is not a tenant");
    assert_eq!(t.waiting + t.in_flight, 360);
    assert_eq!(t.in_flight as usize, m["huge"] + m["small"]);
    assert!(t.complete);
    let names: Vec<&str> = t.busiest.iter().map(|b| b.tenant.as_str()).collect();
    assert_eq!(names, ["huge", "small"], "busiest first");
    assert_eq!(t.busiest[0].waiting as usize, 300 - m["huge"]);
    assert!(
        t.spread > 0.0,
        "huge has been served more than small: {t:?}"
    );
    let bulk = d.lanes["bulk"];
    assert_eq!(bulk.length, 365, "tenant streams count in the bulk lane");
    assert_eq!(bulk.pending as usize, got.len());
    assert_eq!(bulk.lag as usize, 365 - got.len());
}

#[tokio::test]
async fn a_tenant_with_nothing_left_to_read_leaves_the_ring_and_its_next_ack_brings_it_back() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    enqueue_bulk(&redis, Some("t"), 5).await;
    let first = read(&redis, 10).await;
    assert_eq!(first.len(), 5);
    let key = redis.keys.tenant_stream(0, "t");
    let members = |r: Vec<(String, f64)>| r.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
    assert_eq!(
        members(ring(&redis).await),
        [""],
        "nothing left to read: out of the ring, so no read visits it"
    );
    assert!(exists(&redis, &key).await, "its deliveries keep the stream");
    // More of t's email arrives while it is out of the ring: it waits for t's next ack.
    enqueue_bulk(&redis, Some("t"), 3).await;
    assert!(read(&redis, 10).await.is_empty());
    finish(&redis, &first).await;
    assert_eq!(
        members(ring(&redis).await),
        ["", "t"],
        "the ack found entries waiting"
    );
    let second = read(&redis, 10).await;
    assert_eq!(by_tenant(&second)["t"], 3);
    finish(&redis, &second).await;
    assert!(
        !exists(&redis, &key).await,
        "the last ack deletes the stream"
    );
    assert_eq!(members(ring(&redis).await), [""]);
    // Dead-lettered at max deliveries inside reclaim.lua: deleted there, and settle (which
    // reclaim runs for a tenant stream) ends the stream.
    enqueue_bulk(&redis, Some("t"), 1).await;
    let got = consumer::read_now(&mut *redis.conn().await, &redis.keys, 0, "dead", 10, &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = consumer::reclaim(
        &mut *redis.conn().await,
        &redis.keys,
        &got[0].source(),
        "alive",
        10,
        "0-0",
        10,
        0,
    )
    .await
    .unwrap();
    assert_eq!(r.dead_lettered, 1);
    assert_eq!(redis.xlen(&key).await, 0, "deleted with its ack");
    consumer::settle(&mut *redis.conn().await, &redis.keys, &got[0].source())
        .await
        .unwrap();
    assert!(!exists(&redis, &key).await);
}
