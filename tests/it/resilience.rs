//! Outages: workers ride out a Redis restart (scripts and connections lost), a Redis stall
//! (CLIENT PAUSE, DEBUG SLEEP, a blackholed network) and a Postgres outage: they back off, keep
//! in-flight work unacked until it is recorded, report the outage on /readyz, and resume by
//! themselves. Restarts and pauses use a private redis-server; Postgres outages go through the
//! fault-injecting proxy, so the shared servers are never touched.

use crate::support::private::PrivateRedis;
use crate::support::proxy::{Mode, Proxy, upstream_of};
use crate::support::*;
use mailfleet::Lane;
use mailfleet::api::{Health, ops_router};
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use std::time::Duration;

async fn serve_ops(health: Health) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    tokio::spawn(mailfleet::api::serve(
        listener,
        ops_router(health),
        mailfleet::api::serve::Bounds::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    url
}

async fn readyz(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn send_jobs(redis: &TestRedis, n: usize, tag: &str) -> Vec<uuid::Uuid> {
    let jobs = (0..n)
        .map(|i| job(Lane::Tx, &format!("{tag}{i}@example.com")))
        .collect::<Vec<_>>();
    // The producer's own retry: Redis may still be coming back.
    for _ in 0..100 {
        if let Ok(e) = redis.producer().send_many(jobs.clone()).await {
            return e.iter().map(|e| e.id.as_uuid()).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not enqueue");
}

async fn all_sent_once(pg: &PgPool, mock: &TestMock, ids: &[uuid::Uuid]) {
    eventually("every job sent", Duration::from_secs(60), || async {
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM emails WHERE id = ANY($1) AND status = 'sent'",
        )
        .bind(ids)
        .fetch_one(pg)
        .await
        .unwrap();
        (sent == ids.len() as i64).then_some(())
    })
    .await;
    let counts = mock.state.counts();
    for id in ids {
        assert_eq!(counts.get(&id.to_string()), Some(&1), "job {id} sent once");
    }
}

#[sqlx::test]
async fn a_postgres_outage_holds_acks_reports_unready_and_resumes(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    let proxy = Proxy::start(upstream_of(&db_url(&pg))).await;
    let proxied = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&proxy.url_for(&db_url(&pg)))
        .await
        .unwrap();
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let worker = TestWorker::start(&proxied, &redis, &mock.url, settings()).await;
    let ready = serve_ops(Health {
        redis: redis.pool.clone(),
        pg: proxied.clone(),
        draining: worker.draining(),
    })
    .await;
    assert_eq!(readyz(&ready).await.0, 200);

    let ids = send_jobs(&redis, 40, "pgout").await;
    // Sends are in flight when Postgres goes away: their outcomes cannot be recorded.
    eventually("sends in flight", WAIT, || async {
        (mock.state.stats().received > 0 || redis.pending(Lane::Tx).await > 0).then_some(())
    })
    .await;
    proxy.set(Mode::Refuse);
    proxy.reset();
    let (code, body) = readyz(&ready).await;
    assert_eq!(code, 503);
    assert!(body.contains("postgres unreachable"), "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nothing recorded during the outage was acked: whatever is not final in Postgres is
    // still pending in Redis.
    let final_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE id = ANY($1) AND status = 'sent'")
            .bind(&ids)
            .fetch_one(&pg)
            .await
            .unwrap();
    let (read, pending) = redis.group_progress(Lane::Tx).await;
    assert_eq!(read, 40);
    assert_eq!(
        pending,
        40 - final_now,
        "an entry was acked without its outcome"
    );
    assert!(pending > 0, "the outage caught nothing in flight");

    proxy.set(Mode::Pass);
    all_sent_once(&pg, &mock, &ids).await;
    eventually("all acked", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    assert_eq!(readyz(&ready).await.0, 200);
    worker.stop().await;
}

#[sqlx::test]
async fn a_redis_restart_is_ridden_out_and_nothing_is_lost(pg: PgPool) {
    let mut server = PrivateRedis::start().await;
    let redis = TestRedis::at(&server.url);
    redis.ensure_groups().await;
    let mock = TestMock::start(MockConfig {
        latency: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let ready = serve_ops(Health {
        redis: redis.pool.clone(),
        pg: pg.clone(),
        draining: worker.draining(),
    })
    .await;
    let mut ids = send_jobs(&redis, 100, "before").await;
    server.stop().await;
    let (code, body) = readyz(&ready).await;
    assert_eq!(code, 503);
    assert!(body.contains("redis unreachable"), "{body}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart(Duration::ZERO).await;
    // The restarted server has forgotten every script: the worker reloads them itself.
    ids.extend(send_jobs(&redis, 100, "after").await);
    all_sent_once(&pg, &mock, &ids).await;
    eventually("all acked", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    eventually("ready again", WAIT, || async {
        (readyz(&ready).await.0 == 200).then_some(())
    })
    .await;
    worker.stop().await;
}

#[sqlx::test]
async fn redis_stalls_pause_sleep_and_a_blackhole_are_ridden_out(pg: PgPool) {
    let server = PrivateRedis::start().await;
    // Pooled commands go straight to the server; the worker's blocking reads and a second
    // worker's everything go through a proxy that will blackhole.
    let redis = TestRedis::at(&server.url);
    redis.ensure_groups().await;
    let proxy = Proxy::start(upstream_of(&server.url)).await;
    let via_proxy = redis.via(&proxy.url_for(&server.url));
    let mock = TestMock::start(MockConfig::default()).await;
    let mut s = settings();
    s.visibility_timeout_ms = 5_000;
    let w1 = TestWorker::start(&pg, &redis, &mock.url, s.clone()).await;
    let w2 = TestWorker::start_full(
        &pg,
        &via_proxy,
        &via_proxy.url,
        provider_config(&mock.url),
        s,
    )
    .await;
    let mut ids = send_jobs(&redis, 50, "a").await;
    // CLIENT PAUSE: every client's writes wait.
    server
        .cmd(&["CLIENT", "PAUSE", "1500", "WRITE"])
        .await
        .unwrap();
    ids.extend(send_jobs(&redis, 50, "b").await);
    // DEBUG SLEEP: the server does nothing for a second.
    let sleeper = {
        let url = server.url.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("1")
                .query_async(&mut c)
                .await;
        })
    };
    ids.extend(send_jobs(&redis, 50, "c").await);
    let _ = sleeper.await;
    // A network stall: the second worker's connections hang for 2 s.
    proxy.set(Mode::Blackhole);
    ids.extend(send_jobs(&redis, 50, "d").await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Pass);
    all_sent_once(&pg, &mock, &ids).await;
    eventually("all acked", WAIT, || async {
        (redis.pending(Lane::Tx).await == 0).then_some(())
    })
    .await;
    w1.stop().await;
    w2.stop().await;
}

/// Redis at `maxmemory` with `noeviction`, fed by the API in batches of 1,000 until it refuses:
/// the refused batch enqueued nothing (503 "queue full" with Retry-After, none of its entries
/// or dedup markers left), and a worker started on the full Redis drains every accepted email
/// once.
#[sqlx::test]
async fn at_maxmemory_a_refused_batch_enqueues_nothing_and_a_new_worker_drains_the_rest(
    pg: PgPool,
) {
    use mailfleet::api::ingest::ApiState;
    use mailfleet::api::v1::router;
    use serde_json::{Value, json};
    mailfleet::install_crypto_provider();
    let server = PrivateRedis::start().await;
    let redis = TestRedis::at(&server.url);
    let state = ApiState::new(
        redis.producer(),
        pg.clone(),
        &[mailfleet::config::Secret::new("k-1")],
        256 * 1024,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let info: String =
        redis::from_redis_value(server.cmd(&["INFO", "memory"]).await.unwrap()).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    server
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await
        .unwrap();
    server
        .cmd(&[
            "CONFIG",
            "SET",
            "maxmemory",
            &(used + (3 << 20)).to_string(),
        ])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let text = "x".repeat(2000);
    let mut accepted = Vec::new();
    let mut refused = None;
    // Batches of 1,000 (16 enqueue calls each), so Redis fills up in the middle of one.
    for b in 0..100 {
        let emails: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"to": ["ada@example.com"], "from": "shop@example.com", "subject": "s",
                       "text": text, "idempotency_key": format!("b{b}-{i}")})
            })
            .collect();
        let r = http
            .post(format!("{url}/v1/emails/batch"))
            .bearer_auth("k-1")
            .json(&json!({ "emails": emails }))
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            let v: Value = r.json().await.unwrap();
            accepted.extend(
                v["emails"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned()),
            );
            continue;
        }
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("queue full") && body.contains("nothing was enqueued"),
            "{body}"
        );
        refused = Some(b);
        break;
    }
    let refused = refused.expect("Redis filled up");
    eprintln!(
        "accepted {} in {refused} batches before the refusal",
        accepted.len()
    );
    assert!(!accepted.is_empty(), "some batches fit");
    // Nothing of the refused batch is left: only accepted emails are on the stream, and its
    // dedup markers are gone (a retry with the same keys is a new enqueue, not a duplicate).
    assert_eq!(
        redis.xlen(&redis.keys.lane(0, Lane::Tx)).await as usize,
        accepted.len(),
        "the stream holds exactly the accepted emails"
    );
    for i in 0..1000 {
        let key = redis.keys.dedup(0, &format!("b{refused}-{i}"));
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut *redis.conn().await)
            .await
            .unwrap();
        assert_eq!(n, 0, "no dedup marker of the refused batch is left");
    }
    // A worker starts on the full Redis and sends every accepted email once.
    let mock = TestMock::start(MockConfig::default()).await;
    let w = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    eventually(
        "every accepted email sent",
        Duration::from_secs(60),
        || async { (count_status(&pg, "sent").await as usize == accepted.len()).then_some(()) },
    )
    .await;
    let counts = mock.state.counts();
    assert_eq!(counts.len(), accepted.len());
    assert!(counts.values().all(|n| *n == 1), "each once");
    // Drained, the memory comes back without waiting for the minute's trim: above 80% of
    // maxmemory the leader trims acked entries every few seconds, and the API accepts again.
    let small: Vec<Value> = (0..10)
        .map(|i| {
            json!({"to": ["ada@example.com"], "from": "shop@example.com", "subject": "s",
                        "text": "t", "idempotency_key": format!("after-{i}")})
        })
        .collect();
    eventually("the API accepts again", Duration::from_secs(40), || async {
        let r = http
            .post(format!("{url}/v1/emails/batch"))
            .bearer_auth("k-1")
            .json(&json!({ "emails": small }))
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await;
    w.stop().await;
}
