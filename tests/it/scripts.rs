//! Each Lua script's guarantee, tested directly against Redis.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::scripts::{self, DEAD_LETTER, ENQUEUE, PROMOTE, READ, RETRY};
use mailfleet::stream::{GROUP, Source, consumer, wire};
use redis::Value;
use std::time::Duration;

async fn xadd(redis: &TestRedis, key: &str, fields: &[(&str, &str)]) -> String {
    let mut c = redis::cmd("XADD");
    c.arg(key).arg("*");
    for (k, v) in fields {
        c.arg(*k).arg(*v);
    }
    c.query_async(&mut *redis.conn().await).await.unwrap()
}

async fn zcard(redis: &TestRedis, key: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap()
}

fn enqueue_cmd(redis: &TestRedis, id: &str, idem: &str, due_ms: i64) -> redis::Cmd {
    let k = &redis.keys;
    let mut c = ENQUEUE.call(&[
        &k.dedup(0, if idem.is_empty() { "-" } else { idem }),
        &k.lane(0, Lane::Tx),
        &k.delayed(0),
    ]);
    c.arg(id)
        .arg(idem)
        .arg(1)
        .arg(r#"{"to":["a@example.com"],"from":"b@example.com","subject":"s","text":"t"}"#)
        .arg(60_000)
        .arg(due_ms)
        .arg("tx");
    c
}

#[tokio::test]
async fn enqueue_is_idempotent_per_key_and_parks_future_jobs() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let r = scripts::run_pipeline(
        &mut *conn,
        vec![
            enqueue_cmd(&redis, "id-1", "k", 0),
            enqueue_cmd(&redis, "id-2", "k", 0),
            enqueue_cmd(&redis, "id-3", "", 0),
            enqueue_cmd(&redis, "id-4", "", 0),
        ],
    )
    .await
    .unwrap();
    let ids: Vec<(String, i64)> = r
        .into_iter()
        .map(|v| redis::from_redis_value(v.unwrap()).unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            ("id-1".into(), 1),
            ("id-1".into(), 0),
            ("id-3".into(), 1),
            ("id-4".into(), 1)
        ]
    );
    drop(conn);
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Tx)).await, 3);
    let future = chrono::Utc::now().timestamp_millis() + 60_000;
    scripts::run_one(
        &mut *redis.conn().await,
        enqueue_cmd(&redis, "id-5", "", future),
    )
    .await
    .unwrap();
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await,
        3,
        "a future job is not on the lane"
    );
    assert_eq!(zcard(&redis, &redis.keys.delayed(0)).await, 1);
}

#[tokio::test]
async fn a_delayed_jobs_dedup_marker_outlives_its_wait() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    // Three days out, with a one-minute dedup TTL (enqueue_cmd's).
    let wait_ms: i64 = 3 * 24 * 3_600_000;
    let due = chrono::Utc::now().timestamp_millis() + wait_ms;
    let r = scripts::run_one(&mut *conn, enqueue_cmd(&redis, "id-late", "k-late", due))
        .await
        .unwrap();
    let (id, added): (String, i64) = redis::from_redis_value(r).unwrap();
    assert_eq!((id.as_str(), added), ("id-late", 1));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis.keys.dedup(0, "k-late"))
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert!(
        pttl > wait_ms && pttl <= wait_ms + 60_000,
        "the marker lasts until the job is due plus the TTL: {pttl} ms"
    );
    // A resubmission long after the TTL alone, but before the send, is the same job.
    let r = scripts::run_one(&mut *conn, enqueue_cmd(&redis, "id-again", "k-late", due))
        .await
        .unwrap();
    let (id, added): (String, i64) = redis::from_redis_value(r).unwrap();
    assert_eq!((id.as_str(), added), ("id-late", 0));
}

#[tokio::test]
async fn scripts_reload_themselves_after_redis_forgets_them() {
    let redis = TestRedis::new();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let r = scripts::run_one(&mut *conn, enqueue_cmd(&redis, "id-1", "", 0))
        .await
        .unwrap();
    assert!(matches!(r, Value::Array(_)));
    drop(conn);
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await,
        1,
        "added exactly once"
    );
}

#[tokio::test]
async fn read_serves_tx_strictly_before_bulk() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let (tx, bulk) = (redis.keys.lane(0, Lane::Tx), redis.keys.lane(0, Lane::Bulk));
    for i in 0..5 {
        xadd(&redis, &bulk, &[("n", &i.to_string())]).await;
    }
    for i in 0..3 {
        xadd(&redis, &tx, &[("n", &i.to_string())]).await;
    }
    let mut conn = redis.conn().await;
    let first = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 4, &[])
        .await
        .unwrap();
    let lanes: Vec<Lane> = first.iter().map(|e| e.lane).collect();
    assert_eq!(
        lanes,
        [Lane::Tx, Lane::Tx, Lane::Tx, Lane::Bulk],
        "tx first, bulk fills the rest"
    );
    let second = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 2, &[])
        .await
        .unwrap();
    assert!(second.iter().all(|e| e.lane == Lane::Bulk) && second.len() == 2);
    // A malformed batch size is refused before anything is read.
    let mut bad = READ.call(&[&tx, &bulk]);
    bad.arg(GROUP).arg("c1").arg(0);
    assert!(scripts::run_one(&mut *conn, bad).await.is_err());
}

#[tokio::test]
async fn read_leaves_a_paused_lane_unread() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let (tx, bulk) = (redis.keys.lane(0, Lane::Tx), redis.keys.lane(0, Lane::Bulk));
    for i in 0..3 {
        xadd(&redis, &bulk, &[("n", &i.to_string())]).await;
        xadd(&redis, &tx, &[("n", &i.to_string())]).await;
    }
    let mut conn = redis.conn().await;
    let both = [Lane::Tx, Lane::Bulk];
    let none = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &both)
        .await
        .unwrap();
    assert!(none.is_empty(), "both lanes paused: nothing read");
    let bulk_only = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &[Lane::Tx])
        .await
        .unwrap();
    assert!(
        bulk_only.len() == 3 && bulk_only.iter().all(|e| e.lane == Lane::Bulk),
        "tx paused: only bulk"
    );
    let tx_now = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &[Lane::Bulk])
        .await
        .unwrap();
    assert!(tx_now.len() == 3 && tx_now.iter().all(|e| e.lane == Lane::Tx));
    // The blocking read skips a paused lane too, and returns after its wait with both paused.
    xadd(&redis, &bulk, &[("n", "late")]).await;
    let mut blocking = mailfleet::stream::blocking_connection(
        &redis.url,
        Duration::from_secs(5),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    let got = consumer::read_blocking(&mut blocking, &redis.keys, 0, "c1", 10, 50, &both)
        .await
        .unwrap();
    assert!(got.is_empty());
    let got = consumer::read_blocking(&mut blocking, &redis.keys, 0, "c1", 10, 50, &[Lane::Tx])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn retry_schedules_by_redis_time_and_acks_atomically_and_a_repeat_is_a_no_op() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let lane = redis.keys.lane(0, Lane::Tx);
    xadd(&redis, &lane, &[("v", "1")]).await;
    let mut conn = redis.conn().await;
    let got = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &[])
        .await
        .unwrap();
    let entry = &got[0].entry_id;
    let call = || {
        let mut c = RETRY.call(&[&redis.keys.delayed(0), &lane]);
        c.arg(GROUP).arg(entry).arg(5_000).arg("member-1");
        c
    };
    assert_eq!(
        scripts::run_one(&mut *conn, call()).await.unwrap(),
        Value::Int(1)
    );
    // Due 5 s after Redis' own clock, whatever the caller's clock says.
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut *conn).await.unwrap();
    let redis_now = secs * 1000 + micros / 1000;
    let score: f64 = redis::cmd("ZSCORE")
        .arg(redis.keys.delayed(0))
        .arg("member-1")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let due = score as i64 - redis_now;
    assert!(
        (4_000..=5_000).contains(&due),
        "due {due} ms after Redis TIME, not at an absolute time the worker chose"
    );
    drop(conn);
    assert_eq!(redis.pending(Lane::Tx).await, 0, "acked");
    assert_eq!(zcard(&redis, &redis.keys.delayed(0)).await, 1, "scheduled");
    // Repeating (e.g. after a lost reply) does nothing: the entry is no longer pending.
    let _: i64 = redis::cmd("ZREM")
        .arg(redis.keys.delayed(0))
        .arg("member-1")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(
        scripts::run_one(&mut *redis.conn().await, call())
            .await
            .unwrap(),
        Value::Int(0)
    );
    assert_eq!(
        zcard(&redis, &redis.keys.delayed(0)).await,
        0,
        "a repeat never schedules twice"
    );
}

/// A campaign's bulk entries fall due by the thousand; a tx retry due after them is still
/// promoted by the first call, from the tx lane's own delayed set.
#[tokio::test]
async fn promote_moves_due_tx_entries_before_a_bulk_backlog_due_earlier() {
    let redis = TestRedis::new();
    let k = &redis.keys;
    let now = chrono::Utc::now().timestamp_millis();
    let member = |id: String, lane: &str| {
        serde_json::json!({"v":"1","id":id,"idem":"","enqueued_at":"7","payload":"{\"x\":1}","lane":lane}).to_string()
    };
    let mut conn = redis.conn().await;
    let mut p = redis::pipe();
    for i in 0..50 {
        p.cmd("ZADD")
            .arg(k.delayed(0))
            .arg(now - 10_000 + i)
            .arg(member(format!("bulk-{i}"), "bulk"))
            .ignore();
    }
    p.cmd("ZADD")
        .arg(k.delayed_tx(0))
        .arg(now - 1000)
        .arg(member("tx-retry".into(), "tx"))
        .ignore();
    let _: () = p.query_async(&mut *conn).await.unwrap();
    let moved = consumer::promote_due(&mut *conn, k, 10).await.unwrap();
    drop(conn);
    assert_eq!(moved, 10);
    assert_eq!(
        redis.xlen(&k.lane(0, Lane::Tx)).await,
        1,
        "the tx entry first"
    );
    assert_eq!(redis.xlen(&k.lane(0, Lane::Bulk)).await, 9);
}

#[tokio::test]
async fn promote_moves_only_due_entries_and_parks_undecodable_ones() {
    let redis = TestRedis::new();
    let k = &redis.keys;
    let now = chrono::Utc::now().timestamp_millis();
    let member = |id: &str, lane: &str| {
        serde_json::json!({"v":"1","id":id,"idem":"","enqueued_at":"7","payload":"{\"x\":1}","lane":lane}).to_string()
    };
    let mut conn = redis.conn().await;
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(k.delayed(0))
        .arg(now - 1000)
        .arg(member("a", "tx"))
        .ignore()
        .cmd("ZADD")
        .arg(k.delayed(0))
        .arg(now - 1000)
        .arg(member("b", "bulk"))
        .ignore()
        .cmd("ZADD")
        .arg(k.delayed(0))
        .arg(now + 600_000)
        .arg(member("c", "tx"))
        .ignore()
        .cmd("ZADD")
        .arg(k.delayed(0))
        .arg(now - 1000)
        .arg("not json")
        .ignore()
        .query_async(&mut *conn)
        .await
        .unwrap();
    let mut c = PROMOTE.call(&[&k.delayed(0), &k.lane(0, Lane::Tx), &k.lane(0, Lane::Bulk)]);
    c.arg(100);
    assert_eq!(
        scripts::run_one(&mut *conn, c).await.unwrap(),
        Value::Int(2)
    );
    drop(conn);
    assert_eq!(redis.xlen(&k.lane(0, Lane::Tx)).await, 1);
    assert_eq!(redis.xlen(&k.lane(0, Lane::Bulk)).await, 1);
    let left: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(k.delayed(0))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert_eq!(left.len(), 2, "the future one and the undecodable one stay");
    assert!(
        left.iter().any(|(m, s)| m == "not json" && *s > 1e15),
        "undecodable parked far in the future"
    );
    // The promoted entry decodes back into the original fields.
    let f = &redis.entries(&k.lane(0, Lane::Tx)).await[0];
    assert_eq!(f["id"], "a");
    assert_eq!(f["enqueued_at"], "7");
    assert_eq!(f["v"], wire::VERSION);
    assert!(
        !f.contains_key("idem"),
        "an empty idempotency key is not written"
    );
}

#[tokio::test]
async fn dead_letter_keeps_the_original_fields_acks_and_never_doubles() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let lane = redis.keys.lane(0, Lane::Bulk);
    xadd(&redis, &lane, &[("v", "9"), ("weird", "yes")]).await;
    let mut conn = redis.conn().await;
    let got = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &[])
        .await
        .unwrap();
    let call = || {
        let mut c = DEAD_LETTER.call(&[&redis.keys.dead(0), &lane]);
        c.arg(GROUP)
            .arg("bulk")
            .arg(&got[0].entry_id)
            .arg("unknown_version")
            .arg("malformed")
            .arg("v=9")
            .arg(0);
        c
    };
    assert_eq!(
        scripts::run_one(&mut *conn, call()).await.unwrap(),
        Value::Int(1)
    );
    assert_eq!(
        scripts::run_one(&mut *conn, call()).await.unwrap(),
        Value::Int(0),
        "a repeat is a no-op"
    );
    drop(conn);
    assert_eq!(redis.pending(Lane::Bulk).await, 0);
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 1);
    let f = &redis.dead_entries().await[0];
    for (k, want) in [
        ("reason", "unknown_version"),
        ("class", "malformed"),
        ("orig_v", "9"),
        ("orig_weird", "yes"),
        ("lane", "bulk"),
    ] {
        assert_eq!(f[k], want);
    }
}

async fn pending_detail(redis: &TestRedis, key: &str) -> Vec<(String, String, i64, i64)> {
    let v: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg(mailfleet::stream::GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    v
}

#[tokio::test]
async fn touch_refreshes_only_this_consumers_entries_without_counting_a_delivery() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let key = redis.keys.lane(0, Lane::Tx);
    for i in 0..3 {
        xadd(&redis, &key, &[("v", "1"), ("n", &i.to_string())]).await;
    }
    let mut conn = redis.conn().await;
    let read = consumer::read_now(&mut *conn, &redis.keys, 0, "alive", 10, &[])
        .await
        .unwrap();
    let ids: Vec<String> = read.iter().map(|e| e.entry_id.clone()).collect();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(Source::shared(0, Lane::Tx), ids.clone());
    // Another consumer cannot touch (and so cannot steal) them.
    let n = consumer::touch(&mut *conn, &redis.keys, "intruder", &entries)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let before = pending_detail(&redis, &key).await;
    assert!(
        before
            .iter()
            .all(|(_, c, idle, _)| c == "alive" && *idle >= 100)
    );
    // The owner resets their idle time; the delivery count stays 1.
    let n = consumer::touch(&mut *conn, &redis.keys, "alive", &entries)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let after = pending_detail(&redis, &key).await;
    assert_eq!(after.len(), 3);
    assert!(
        after
            .iter()
            .all(|(_, c, idle, deliveries)| c == "alive" && *idle < 100 && *deliveries == 1),
        "{after:?}"
    );
}

/// A worker holding hundreds of entries, some of them already reclaimed by another consumer
/// and some it no longer lists: the ids go in many calls (more than [`consumer::TOUCH_CHUNK`]),
/// in stream order, which is not their string order (ms 98 comes before ms 700), and exactly
/// the listed entries this consumer still holds are refreshed.
#[tokio::test]
async fn touch_in_chunks_refreshes_exactly_the_listed_entries_this_consumer_holds() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let key = redis.keys.lane(0, Lane::Bulk);
    let mut conn = redis.conn().await;
    let n = 700u64;
    let id = |i: u64| format!("{}-{}", i * 7, i % 3);
    for i in 1..=n {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg(id(i))
            .arg("v")
            .arg("1")
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("alive")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut *conn)
        .await
        .unwrap();
    // Every third entry was reclaimed by another consumer.
    for i in (3..=n).step_by(3) {
        let _: Value = redis::cmd("XCLAIM")
            .arg(&key)
            .arg(GROUP)
            .arg("other")
            .arg(0)
            .arg(id(i))
            .arg("JUSTID")
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    // The worker lists all but every fifth entry, newest first.
    let listed: Vec<String> = (1..=n)
        .rev()
        .filter(|i| !i.is_multiple_of(5))
        .map(id)
        .collect();
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(Source::shared(0, Lane::Bulk), listed);
    let touched = consumer::touch(&mut *conn, &redis.keys, "alive", &entries)
        .await
        .unwrap();
    let expect = |i: u64| !i.is_multiple_of(3) && !i.is_multiple_of(5);
    assert_eq!(touched, (1..=n).filter(|&i| expect(i)).count() as u64);
    let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&key)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(n + 10)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(pending.len() as u64, n);
    for (i, (entry, owner, idle, deliveries)) in (1..=n).zip(&pending) {
        assert_eq!(*entry, id(i));
        let want_owner = if i.is_multiple_of(3) {
            "other"
        } else {
            "alive"
        };
        assert_eq!(owner, want_owner, "{entry}");
        assert_eq!(*idle < 100, expect(i), "{entry} idle {idle}");
        assert_eq!(*deliveries, 1, "{entry}: a touch is not a delivery");
    }
}

#[tokio::test]
async fn dlq_replay_restores_the_job_once_and_refuses_at_max_replays() {
    let redis = TestRedis::new();
    let k = &redis.keys;
    let dead = k.dead(0);
    let fresh = xadd(
        &redis,
        &dead,
        &[
            ("reason", "max_attempts"),
            ("lane", "tx"),
            ("orig_v", "1"),
            ("orig_id", "0190a1b2-0000-7000-8000-000000000001"),
            ("orig_payload", "{}"),
        ],
    )
    .await;
    let tired = xadd(
        &redis,
        &dead,
        &[
            ("reason", "bad_json"),
            ("lane", "bulk"),
            ("orig_v", "1"),
            ("orig_replays", "3"),
        ],
    )
    .await;
    let call = |ids: &[&str]| {
        let mut c = mailfleet::scripts::DLQ_REPLAY.call(&[
            &dead,
            &k.lane(0, Lane::Tx),
            &k.lane(0, Lane::Bulk),
        ]);
        c.arg(3).arg(ids);
        c
    };
    let mut conn = redis.conn().await;
    let r: Vec<i64> = redis::from_redis_value(
        scripts::run_one(&mut *conn, call(&[&fresh, &tired]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r, vec![1, 1, 0], "replayed, refused, missing");
    drop(conn);
    let tx = redis.entries(&k.lane(0, Lane::Tx)).await;
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0]["id"], "0190a1b2-0000-7000-8000-000000000001");
    assert_eq!(tx[0]["replays"], "1");
    assert!(
        !tx[0].contains_key("reason"),
        "only the original fields go back"
    );
    let left = redis.dead_entries().await;
    assert_eq!(left.len(), 1, "the refused one stays dead");
    assert_eq!(left[0]["orig_replays"], "3");
    // Replaying the same id again finds nothing: never twice.
    let mut conn = redis.conn().await;
    let r: Vec<i64> =
        redis::from_redis_value(scripts::run_one(&mut *conn, call(&[&fresh])).await.unwrap())
            .unwrap();
    assert_eq!(r, vec![0, 0, 1]);
}

#[tokio::test]
async fn dlq_replay_sends_a_tenants_bulk_back_through_the_delayed_set_to_its_own_stream() {
    let redis = TestRedis::new();
    let k = &redis.keys;
    let dead = k.dead(0);
    let payload = r#"{"to":["a@example.com"],"from":"f@example.com","tenant":"acme","text":"x/y"}"#;
    let id = "0190a1b2-0000-7000-8000-000000000002";
    let entry = xadd(
        &redis,
        &dead,
        &[
            ("reason", "max_attempts"),
            ("lane", "bulk"),
            ("orig_v", "1"),
            ("orig_id", id),
            ("orig_idem", "acme/k"),
            ("orig_enqueued_at", "1700000000000"),
            ("orig_payload", payload),
            ("orig_replays", "1"),
        ],
    )
    .await;
    let mut c = mailfleet::scripts::DLQ_REPLAY.call(&[
        &dead,
        &k.lane(0, Lane::Tx),
        &k.lane(0, Lane::Bulk),
        &k.delayed(0),
    ]);
    c.arg(3).arg(&[&entry]);
    let mut conn = redis.conn().await;
    let r: Vec<i64> =
        redis::from_redis_value(scripts::run_one(&mut *conn, c).await.unwrap()).unwrap();
    assert_eq!(r, vec![1, 0, 0]);
    assert_eq!(
        redis.xlen(&k.lane(0, Lane::Bulk)).await,
        0,
        "not on the shared bulk stream"
    );
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(k.delayed(0))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        members[0].1, 1_700_000_000_000.0,
        "due at once, oldest first"
    );
    let m: serde_json::Value = serde_json::from_str(&members[0].0).unwrap();
    assert_eq!(m["tenant"], "acme");
    assert_eq!(m["id"], id);
    assert_eq!(m["idem"], "acme/k");
    assert_eq!(m["payload"], payload, "the payload as it was");
    assert_eq!(m["replays"], "2");
    assert_eq!(m["lane"], "bulk");
    // promote.lua takes it to the tenant's own stream, which joins the ring.
    let mut c = PROMOTE.call(&[
        &k.delayed(0),
        &k.lane(0, Lane::Tx),
        &k.lane(0, Lane::Bulk),
        &k.delayed_tx(0),
        &k.bulk_ring(0),
        &k.bulk_bell(0),
    ]);
    c.arg(100).arg(k.tenant_stream_prefix(0)).arg(GROUP);
    assert_eq!(
        scripts::run_one(&mut *conn, c).await.unwrap(),
        Value::Int(1)
    );
    drop(conn);
    let on = redis.entries(&k.tenant_stream(0, "acme")).await;
    assert_eq!(on.len(), 1);
    assert_eq!(on[0]["id"], id);
    assert_eq!(on[0]["replays"], "2");
    assert!(redis.dead_entries().await.is_empty());
}

#[tokio::test]
async fn trim_removes_only_entries_every_group_has_acked() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let tx = redis.keys.lane(0, Lane::Tx);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(xadd(&redis, &tx, &[("n", &i.to_string())]).await);
    }
    let mut conn = redis.conn().await;
    let read = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 6, &[])
        .await
        .unwrap();
    assert_eq!(read.len(), 6);
    let ack = |which: Vec<usize>| {
        let mut c = redis::cmd("XACK");
        c.arg(&tx).arg(GROUP);
        for i in which {
            c.arg(&ids[i]);
        }
        c
    };
    let _: i64 = ack(vec![0, 1, 3]).query_async(&mut *conn).await.unwrap();
    // Pending: 2, 4, 5. Not yet read: 6..9. Only 0 and 1 are below the oldest pending.
    assert_eq!(
        consumer::trim_done(&mut *conn, &redis.keys).await.unwrap(),
        2
    );
    assert_eq!(redis.xlen(&tx).await, 8);
    let left: Vec<String> = redis
        .entries(&tx)
        .await
        .iter()
        .map(|e| e["n"].clone())
        .collect();
    assert_eq!(
        left,
        ["2", "3", "4", "5", "6", "7", "8", "9"],
        "pending and unread stay"
    );
    // Everything read is acked: up to the last delivered entry goes, the unread stay.
    let _: i64 = ack(vec![2, 4, 5]).query_async(&mut *conn).await.unwrap();
    assert_eq!(
        consumer::trim_done(&mut *conn, &redis.keys).await.unwrap(),
        3
    );
    assert_eq!(redis.xlen(&tx).await, 5);
    // A second group that has read nothing holds everything.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&tx)
        .arg("audit")
        .arg("0")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let more = consumer::read_now(&mut *conn, &redis.keys, 0, "c1", 10, &[])
        .await
        .unwrap();
    let mut c = redis::cmd("XACK");
    c.arg(&tx).arg(GROUP);
    for e in &more {
        c.arg(&e.entry_id);
    }
    let _: i64 = c.query_async(&mut *conn).await.unwrap();
    assert_eq!(
        consumer::trim_done(&mut *conn, &redis.keys).await.unwrap(),
        0
    );
    assert_eq!(redis.xlen(&tx).await, 5);
    // An empty or missing stream is a no-op.
    let _: () = redis::cmd("DEL")
        .arg(&tx)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        consumer::trim_done(&mut *conn, &redis.keys).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn one_enqueue_call_takes_a_batch_in_order_and_a_key_repeated_in_it_is_a_duplicate() {
    let redis = TestRedis::new();
    let k = &redis.keys;
    let payload = r#"{"to":["a@example.com"],"from":"b@example.com","subject":"s","text":"t"}"#;
    let mut c = ENQUEUE.call(&[
        &k.dedup(0, "k"),
        &k.lane(0, Lane::Bulk),
        &k.delayed(0),
        &k.bulk_ring(0),
        &k.bulk_bell(0),
        &k.dedup(0, "-"),
        &k.dedup(0, "k"),
        &k.dedup(0, "-"),
    ]);
    c.arg("id-1")
        .arg("k")
        .arg(1)
        .arg(payload)
        .arg(60_000)
        .arg(0)
        .arg("bulk")
        .arg("")
        .arg(GROUP);
    c.arg("id-2").arg("").arg(1).arg(payload).arg(0);
    c.arg("id-3").arg("k").arg(1).arg(payload).arg(0);
    // Due far in the future: the delayed set.
    c.arg("id-4")
        .arg("")
        .arg(1)
        .arg(payload)
        .arg(4_000_000_000_000i64);
    let mut conn = redis.conn().await;
    let v = scripts::run_one(&mut *conn, c).await.unwrap();
    let r: Vec<(String, i64)> = redis::from_redis_value::<Vec<redis::Value>>(v)
        .unwrap()
        .chunks(2)
        .map(|p| {
            (
                redis::from_redis_value(p[0].clone()).unwrap(),
                redis::from_redis_value(p[1].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        r,
        [
            ("id-1".to_owned(), 1),
            ("id-2".to_owned(), 1),
            ("id-1".to_owned(), 0),
            ("id-4".to_owned(), 1)
        ]
    );
    drop(conn);
    let ids: Vec<String> = redis
        .entries(&k.lane(0, Lane::Bulk))
        .await
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, ["id-1", "id-2"], "in order, the duplicate not written");
    assert_eq!(zcard(&redis, &k.delayed(0)).await, 1);
    // Extra jobs need a dedup key each.
    let mut bad = ENQUEUE.call(&[
        &k.dedup(0, "-"),
        &k.lane(0, Lane::Bulk),
        &k.delayed(0),
        &k.bulk_ring(0),
        &k.bulk_bell(0),
    ]);
    bad.arg("id-5")
        .arg("")
        .arg(1)
        .arg(payload)
        .arg(60_000)
        .arg(0)
        .arg("bulk")
        .arg("")
        .arg(GROUP);
    bad.arg("id-6").arg("").arg(1).arg(payload).arg(0);
    assert!(
        scripts::run_one(&mut *redis.conn().await, bad)
            .await
            .is_err()
    );
    assert_eq!(
        redis.xlen(&k.lane(0, Lane::Bulk)).await,
        2,
        "nothing written"
    );
}

#[tokio::test]
async fn unenqueue_takes_back_unread_jobs_and_their_markers_but_never_a_read_one() {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let k = &redis.keys;
    let mut conn = redis.conn().await;
    let due = chrono::Utc::now().timestamp_millis() + 3_600_000;
    for (id, idem, at) in [("j-1", "k-1", 0), ("j-2", "k-2", 0), ("j-3", "k-3", due)] {
        scripts::run_one(&mut *conn, enqueue_cmd(&redis, id, idem, at))
            .await
            .unwrap();
    }
    // A worker reads the first before the batch is taken back.
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("w")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(k.lane(0, Lane::Tx))
        .arg(">")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let mut c = scripts::UNENQUEUE.call(&[
        &k.lane(0, Lane::Tx),
        &k.delayed(0),
        &k.dedup(0, "k-1"),
        &k.dedup(0, "k-2"),
        &k.dedup(0, "k-3"),
    ]);
    c.arg(GROUP)
        .arg("j-1")
        .arg(0)
        .arg("j-2")
        .arg(0)
        .arg("j-3")
        .arg(due);
    let kept: Vec<String> =
        redis::from_redis_value(scripts::run_one(&mut *conn, c).await.unwrap()).unwrap();
    drop(conn);
    assert_eq!(kept, ["j-1"], "the read job is not taken back");
    assert_eq!(redis.xlen(&k.lane(0, Lane::Tx)).await, 1);
    assert_eq!(
        zcard(&redis, &k.delayed(0)).await,
        0,
        "the delayed one is taken back"
    );
    let exists = |key: String| {
        let redis = &redis;
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut *redis.conn().await)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        exists(k.dedup(0, "k-1")).await,
        1,
        "the read job's marker stays"
    );
    assert_eq!(exists(k.dedup(0, "k-2")).await, 0);
    assert_eq!(exists(k.dedup(0, "k-3")).await, 0);
}

async fn read_group(redis: &TestRedis, stream: &str, n: usize) {
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("c")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn backlog_reports_what_the_group_has_not_been_delivered_yet() {
    use mailfleet::stream::backlog;
    let redis = TestRedis::new();
    let stream = redis.keys.lane(0, Lane::Bulk);
    let missing = redis.keys.lane(0, Lane::Tx);
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(xadd(&redis, &stream, &[("n", &i.to_string())]).await);
    }
    read_group(&redis, &stream, 2).await;
    let ms = |id: &str| id.split('-').next().unwrap().parse::<i64>().unwrap();
    let got = backlog::read(&mut *conn, &[stream.clone(), missing], GROUP)
        .await
        .unwrap();
    // The oldest undelivered entry is the third.
    assert_eq!(got[0].oldest_ms, ms(&ids[2]));
    assert_eq!(got[0].newest_ms, ms(&ids[4]));
    assert!(got[0].may_hold(ms(&ids[3])), "an undelivered entry's time");
    // No stream: nothing can be waiting there.
    assert_eq!(
        got[1],
        backlog::Backlog {
            oldest_ms: -1,
            newest_ms: -1
        }
    );
    // Everything delivered: nothing waits.
    read_group(&redis, &stream, 10).await;
    let got = backlog::read(&mut *conn, std::slice::from_ref(&stream), GROUP)
        .await
        .unwrap();
    assert_eq!(got[0].oldest_ms, -1);
    assert!(!got[0].may_hold(ms(&ids[3])));
}
