//! Pause and resume by lane, provider and tenant, under load: within a second of a pause
//! nothing more of it reaches a provider while the rest flows; after resume everything is
//! sent once, and a paused job uses no attempt.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::config::{ProviderKind, Secret, SendConfig};
use mailfleet::mock::MockConfig;
use mailfleet::stream::pause::{self, Scope};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The enqueued ids, one list per kind of job.
type Ids = Arc<Mutex<Vec<Vec<uuid::Uuid>>>>;

/// Enqueue 4 jobs of each kind every 50 ms until stopped; returns the ids by kind.
fn load(
    redis: &TestRedis,
    kinds: Vec<(Lane, Option<&'static str>)>,
    stop: CancellationToken,
) -> (Ids, tokio::task::JoinHandle<()>) {
    let ids = Arc::new(Mutex::new(vec![Vec::new(); kinds.len()]));
    let producer = redis.producer();
    let out = ids.clone();
    let handle = tokio::spawn(async move {
        let mut n = 0;
        while !stop.is_cancelled() {
            for (k, (lane, tenant)) in kinds.iter().enumerate() {
                for _ in 0..4 {
                    n += 1;
                    let mut p = json!({"to": [format!("u{n}@example.com")], "from": "shop@example.com",
                                       "subject": "s", "text": "t"});
                    if let Some(t) = tenant {
                        p["tenant"] = json!(t);
                    }
                    let job = mailfleet::NewJob {
                        lane: *lane,
                        idempotency_key: None,
                        payload: serde_json::from_value(p).unwrap(),
                    };
                    let id = producer.send(job).await.expect("enqueue").id.as_uuid();
                    out.lock().unwrap()[k].push(id);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (ids, handle)
}

fn accepted(mock: &TestMock, ids: &[uuid::Uuid]) -> usize {
    let counts = mock.state.counts();
    ids.iter()
        .filter(|id| counts.contains_key(&id.to_string()))
        .count()
}

/// Pause, check that within a second `held` stops reaching the provider while `flowing` goes
/// on, resume, and check every job is sent exactly once.
async fn pause_and_resume(
    pg: &PgPool,
    redis: &TestRedis,
    mock: &TestMock,
    kinds: Vec<(Lane, Option<&'static str>)>,
    scope: Scope,
    name: &str,
    held_kind: usize,
) {
    let stop = CancellationToken::new();
    let (ids, producer) = load(redis, kinds, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let snapshot = |k: usize| ids.lock().unwrap()[k].clone();
    assert!(
        accepted(mock, &snapshot(held_kind)) > 0,
        "flowing before the pause"
    );
    pause::set(&mut *redis.conn().await, &redis.keys, scope, name)
        .await
        .unwrap();
    // Within a second the pause is in force (sends already under way may finish).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held_before = accepted(mock, &snapshot(held_kind));
    let flowing_before = accepted(mock, &snapshot(1 - held_kind));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        accepted(mock, &snapshot(held_kind)),
        held_before,
        "nothing paused reached the provider"
    );
    assert!(
        accepted(mock, &snapshot(1 - held_kind)) > flowing_before,
        "the rest kept flowing"
    );
    let status = mailfleet(pg, redis)
        .args(["status", "--json"])
        .output()
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        s["paused"][format!("{}:{name}", scope.as_str())].is_i64(),
        "status shows the pause: {s}"
    );
    pause::clear(&mut *redis.conn().await, &redis.keys, scope, name)
        .await
        .unwrap();
    stop.cancel();
    producer.await.unwrap();
    let all: Vec<uuid::Uuid> = ids.lock().unwrap().concat();
    eventually(
        "every job sent after the resume",
        Duration::from_secs(60),
        || async { (accepted(mock, &all) == all.len()).then_some(()) },
    )
    .await;
    let counts = mock.state.counts();
    assert!(
        all.iter().all(|id| counts[&id.to_string()] == 1),
        "each sent once"
    );
    let max_attempts: i32 =
        sqlx::query_scalar("SELECT max(attempts) FROM emails WHERE id = ANY($1)")
            .bind(&all)
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!(max_attempts, 1, "a paused job uses no attempt");
}

#[sqlx::test]
async fn a_paused_lane_stops_within_a_second_and_resumes(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let w = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    pause_and_resume(
        &pg,
        &redis,
        &mock,
        vec![(Lane::Bulk, None), (Lane::Tx, None)],
        Scope::Lane,
        "bulk",
        0,
    )
    .await;
    w.stop().await;
}

#[sqlx::test]
async fn a_paused_tenant_stops_within_a_second_and_resumes(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let w = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    pause_and_resume(
        &pg,
        &redis,
        &mock,
        vec![(Lane::Tx, Some("acme")), (Lane::Tx, Some("other"))],
        Scope::Tenant,
        "acme",
        0,
    )
    .await;
    w.stop().await;
}

#[sqlx::test]
async fn a_paused_provider_is_skipped_and_traffic_returns_on_resume(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let name = format!("pp-{}", uuid::Uuid::now_v7().simple());
    let mut a = mailfleet::config::ProviderConfig::new(&name, ProviderKind::Sendgrid, &mock.url);
    a.api_key = Secret::new("k");
    let mut b = mailfleet::config::ProviderConfig::new(
        format!("{name}-b"),
        ProviderKind::Postmark,
        &mock.url,
    );
    b.api_key = Secret::new("t");
    let w = TestWorker::start_config(
        &pg,
        &redis,
        &redis.url,
        SendConfig::of(vec![a, b]),
        settings(),
    )
    .await;
    let stop = CancellationToken::new();
    let (ids, producer) = load(&redis, vec![(Lane::Tx, None)], stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    pause::set(
        &mut *redis.conn().await,
        &redis.keys,
        Scope::Provider,
        &name,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let by = |d: &str| mock.state.stats().by_dialect.get(d).copied().unwrap_or(0);
    let (sg, pm) = (by("sendgrid"), by("postmark"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(by("sendgrid"), sg, "the paused provider got nothing");
    assert!(by("postmark") > pm, "its traffic went to the next provider");
    pause::clear(
        &mut *redis.conn().await,
        &redis.keys,
        Scope::Provider,
        &name,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(by("sendgrid") > sg, "traffic returned after the resume");
    stop.cancel();
    producer.await.unwrap();
    let all: HashSet<String> = ids.lock().unwrap()[0]
        .iter()
        .map(|i| i.to_string())
        .collect();
    eventually("all sent", Duration::from_secs(30), || async {
        let c = mock.state.counts();
        all.iter().all(|id| c.get(id) == Some(&1)).then_some(())
    })
    .await;
    w.stop().await;
}
