//! Spawn helpers: an in-process mock provider and workers wired to a test's own database and
//! Redis prefix, plus polling with a deadline (tests never rely on sleeps alone).

#![allow(dead_code)]

pub mod private;
pub mod proxy;

use mailfleet::config::{ProviderConfig, ProviderKind, Secret, SendConfig};
use mailfleet::mock::{self, Mock, MockConfig};
use mailfleet::provider::{Providers, http_client};
use mailfleet::stream::{Keys, consumer};
use mailfleet::worker::{self, Deps, Running, Settings};
use mailfleet::{Lane, NewJob, Payload, Producer};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn redis_url() -> String {
    std::env::var("MAILFLEET_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// A test's Redis: its own prefix on the shared server.
pub struct TestRedis {
    pub url: String,
    pub keys: Keys,
    pub pool: mailfleet::stream::Pool,
    /// Whether dropping this deletes the prefix's keys (not for a second view of one prefix).
    owner: bool,
}

impl TestRedis {
    pub fn new() -> Self {
        Self::at(&redis_url())
    }
    /// A test prefix on the Redis at `url` (a private instance, or the shared one through a proxy).
    pub fn at(url: &str) -> Self {
        let url = url.to_owned();
        let pool = mailfleet::stream::pool(&url, Duration::from_secs(5), 8).expect("redis pool");
        TestRedis {
            url,
            keys: Keys::new(unique_prefix(), 1),
            pool,
            owner: true,
        }
    }
    /// A test prefix with `partitions` partitions on the shared Redis; the pool has room for
    /// an in-process worker's bulk readers, which keep a connection each.
    pub fn partitioned(partitions: u16) -> Self {
        let url = redis_url();
        let size = usize::from(partitions) + 8;
        let pool = mailfleet::stream::pool(&url, Duration::from_secs(5), size).expect("redis pool");
        TestRedis {
            url,
            keys: Keys::new(unique_prefix(), partitions),
            pool,
            owner: true,
        }
    }
    /// A test prefix with `partitions` partitions on a Redis Cluster (`url`: its seed list).
    /// The cluster is torn down whole, so nothing is deleted on drop.
    pub fn on_cluster(url: &str, partitions: u16) -> Self {
        // Each in-process worker keeps a connection per partition reader.
        let pool = mailfleet::stream::pool(url, Duration::from_secs(5), 64).expect("cluster pool");
        assert!(pool.is_cluster(), "a seed list makes a cluster pool");
        TestRedis {
            url: url.to_owned(),
            keys: Keys::new(unique_prefix(), partitions),
            pool,
            owner: false,
        }
    }
    /// The same prefix reached through another URL (a proxy in front of the same server).
    pub fn via(&self, url: &str) -> Self {
        let pool = mailfleet::stream::pool(url, Duration::from_secs(5), 8).expect("redis pool");
        TestRedis {
            url: url.to_owned(),
            keys: self.keys.clone(),
            pool,
            owner: false,
        }
    }
    pub fn producer(&self) -> Producer {
        Producer::from_pool(self.pool.clone(), self.keys.clone())
    }
    /// Enqueue one job through the library producer; its id.
    pub async fn enqueue(&self, job: NewJob) -> uuid::Uuid {
        self.producer()
            .send(job)
            .await
            .expect("enqueue")
            .id
            .as_uuid()
    }
    pub async fn conn(&self) -> mailfleet::stream::conn::Connection {
        self.pool.get().await.expect("redis connection")
    }
    pub async fn ensure_groups(&self) {
        consumer::ensure_groups(&mut *self.conn().await, &self.keys)
            .await
            .expect("groups");
    }
    /// Entries pending (read, not acked) on a lane.
    pub async fn pending(&self, lane: Lane) -> i64 {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(self.keys.lane(0, lane))
            .arg(mailfleet::stream::GROUP)
            .query_async(&mut *self.conn().await)
            .await
            .expect("xpending");
        match v {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        }
    }
    /// (entries read by the group, entries pending) on a lane of partition 0, from XINFO GROUPS.
    pub async fn group_progress(&self, lane: Lane) -> (i64, i64) {
        self.group_progress_of(0, lane).await
    }
    /// (entries read by the group, entries pending) on a lane of partition `p`.
    pub async fn group_progress_of(&self, p: u16, lane: Lane) -> (i64, i64) {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.keys.lane(p, lane))
            .query_async(&mut *self.conn().await)
            .await
            .expect("xinfo groups");
        let g = groups.into_iter().next().unwrap_or_default();
        let int = |k: &str| match g.get(k) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        (int("entries-read"), int("pending"))
    }
    /// The dead-letter stream of partition 0, each entry's fields as strings.
    pub async fn dead_entries(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.entries(&self.keys.dead(0)).await
    }
    /// Every entry of a stream, its fields as strings.
    pub async fn entries(&self, key: &str) -> Vec<std::collections::HashMap<String, String>> {
        let v: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut *self.conn().await)
            .await
            .expect("xrange dead");
        v.ids
            .into_iter()
            .map(|e| {
                e.map
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.clone(), redis::from_redis_value_ref::<String>(v).ok()?))
                    })
                    .collect()
            })
            .collect()
    }
    pub async fn xlen(&self, key: &str) -> i64 {
        redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut *self.conn().await)
            .await
            .expect("xlen")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Best effort: remove this test's keys with a blocking client (no runtime in Drop),
        // bounded in time: the server may be a stopped private instance.
        if !self.owner {
            return;
        }
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(1))
            && c.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.keys.prefix()))
                .query(&mut c)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
            }
        }
    }
}

/// An in-process mock provider on a random port.
pub struct TestMock {
    pub url: String,
    /// The mock's SMTP listener, `host:port`.
    pub smtp: String,
    pub state: Mock,
    token: CancellationToken,
}

impl TestMock {
    pub async fn start(cfg: MockConfig) -> Self {
        let server = mock::build(cfg).await.expect("mock");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let smtp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let smtp_addr = smtp.local_addr().expect("addr").to_string();
        let token = CancellationToken::new();
        tokio::spawn(mock::serve(listener, server.router, token.clone()));
        tokio::spawn(mock::smtp::serve(smtp, server.state.clone(), token.clone()));
        TestMock {
            url,
            smtp: smtp_addr,
            state: server.state,
            token,
        }
    }
}

impl Drop for TestMock {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub fn provider_config(url: &str) -> ProviderConfig {
    let mut p = ProviderConfig::new("sendgrid", ProviderKind::Sendgrid, url);
    p.api_key = Secret::new("test-key");
    p.timeout_ms = 5_000;
    p
}

/// Fast-reacting settings for tests.
pub fn settings() -> Settings {
    let mut s = Settings::with_consumer(format!("c-{}", uuid::Uuid::now_v7().simple()));
    s.block_ms = 100;
    s.promote_interval_ms = 20;
    s.drain_timeout = Duration::from_secs(10);
    s
}

/// A worker running in this process.
pub struct TestWorker {
    pub token: CancellationToken,
    running: Option<Running>,
}

impl TestWorker {
    pub async fn start(pg: &PgPool, redis: &TestRedis, mock_url: &str, settings: Settings) -> Self {
        Self::start_with(pg, redis, provider_config(mock_url), settings).await
    }
    pub async fn start_with(
        pg: &PgPool,
        redis: &TestRedis,
        provider: ProviderConfig,
        settings: Settings,
    ) -> Self {
        Self::start_full(pg, redis, &redis.url, provider, settings).await
    }
    /// A worker whose blocking reads go to `redis_url` (a proxy, say) and whose pooled
    /// commands go through `redis.pool`.
    pub async fn start_full(
        pg: &PgPool,
        redis: &TestRedis,
        redis_url: &str,
        provider: ProviderConfig,
        settings: Settings,
    ) -> Self {
        Self::start_config(
            pg,
            redis,
            redis_url,
            SendConfig::of(vec![provider]),
            settings,
        )
        .await
    }
    /// A worker with several providers, routes and breaker settings.
    pub async fn start_config(
        pg: &PgPool,
        redis: &TestRedis,
        redis_url: &str,
        send: SendConfig,
        settings: Settings,
    ) -> Self {
        let client = http_client(64).expect("http client");
        let tx_client = http_client(16).expect("http client");
        let deps = Deps {
            redis_url: redis_url.to_owned(),
            redis: redis.pool.clone(),
            pg: pg.clone(),
            keys: redis.keys.clone(),
            providers: Arc::new(
                Providers::from_config(&send, &client, &tx_client).expect("providers"),
            ),
        };
        let token = CancellationToken::new();
        let running = worker::start(settings, deps, token.clone())
            .await
            .expect("worker starts");
        TestWorker {
            token,
            running: Some(running),
        }
    }
    /// The draining flag `/readyz` reports.
    pub fn draining(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.running
            .as_ref()
            .map(|r| r.draining.clone())
            .unwrap_or_default()
    }
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(r) = self.running.take() {
            r.join().await;
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Poll `check` until it returns Some or `within` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn payload(to: &str) -> Payload {
    serde_json::from_value(serde_json::json!({
        "to": [to], "from": "Shop <shop@example.com>", "subject": "Hello", "text": "Hi there"
    }))
    .expect("payload")
}

pub fn job(lane: Lane, to: &str) -> NewJob {
    NewJob {
        lane,
        idempotency_key: None,
        payload: payload(to),
    }
}

pub async fn status_of(pg: &PgPool, id: uuid::Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(id)
        .fetch_optional(pg)
        .await
        .expect("status query")
}

pub async fn count_status(pg: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = $1")
        .bind(status)
        .fetch_one(pg)
        .await
        .expect("count query")
}

pub const WAIT: Duration = Duration::from_secs(20);

/// A URL for the test's own database (for spawned `mailfleet` processes).
pub fn db_url(pg: &PgPool) -> String {
    let opts = pg.connect_options();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (head, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!(
        "{head}/{}",
        opts.get_database().expect("test database name")
    )
}

pub const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");

/// A `mailfleet` command wired to this test's database and Redis prefix.
pub fn mailfleet(pg: &PgPool, redis: &TestRedis) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.env("MAILFLEET_DATABASE_URL", db_url(pg))
        .env("MAILFLEET_REDIS_URL", &redis.url)
        .env("MAILFLEET_PREFIX", redis.keys.prefix())
        // A worker refuses an empty provider credential; tests that send set the URL too.
        .env("MAILFLEET_SENDGRID_API_KEY", "test-key")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    c
}

/// Send signal `sig` to `pid` (SIGKILL 9, SIGTERM 15, SIGSTOP 19, SIGCONT 18 on Linux).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; the pid is a child this test spawned.
    let r = unsafe { libc_kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The value of an unlabelled counter or gauge in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Read entries as a consumer that then "dies": they stay pending under its name.
pub async fn read_and_die(redis: &TestRedis, lane: Lane, n: usize) -> Vec<String> {
    let got = mailfleet::stream::consumer::read_now(
        &mut *redis.conn().await,
        &redis.keys,
        0,
        "crashed-worker",
        n,
        &[],
    )
    .await
    .unwrap();
    got.into_iter()
        .filter(|e| e.lane == lane)
        .map(|e| e.entry_id)
        .collect()
}
