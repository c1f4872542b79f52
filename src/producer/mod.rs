//! [`Producer`]: how Rust app servers enqueue email jobs without the CLI.
//!
//! Every job is validated with the same parsers the worker uses before it reaches Redis, placed
//! in its partition, and written by `lua/enqueue.lua` (idempotency check + XADD, or ZADD to the
//! delayed set for a future `send_at`, in one atomic step). `send_many` pipelines a whole batch:
//! one round trip per chunk, not per email.
//!
//! When an enqueue counts as done is its [`Durability`] (docs/durability.md): `ledger` (the
//! default of [`Producer::connect`] and of every command) also writes the batch's `queued` rows
//! to Postgres in one statement, so the reconciler sends whatever Redis loses; `replicated`
//! waits (`WAIT`) until each master written to has passed the batch to its replicas; `redis`
//! answers once the master has it. A batch that fails any of these is taken back whole.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mailfleet::producer::ProducerError> {
//! use mailfleet::{Producer, NewJob, Lane, Payload};
//! let producer = Producer::connect(
//!     "redis://127.0.0.1:6379",
//!     "postgres://postgres@127.0.0.1:5432/mailfleet",
//!     "mf",
//!     1,
//! )
//! .await?;
//! let payload: Payload = serde_json::from_value(serde_json::json!({
//!     "to": ["ada@example.com"], "from": "shop@example.com",
//!     "subject": "Your order", "text": "Thanks!"
//! })).unwrap();
//! let job = NewJob { lane: Lane::Tx, idempotency_key: Some("order-42".into()), payload };
//! let enqueued = producer.send(job).await?;
//! println!("{}", enqueued.id);
//! # Ok(()) }
//! ```

mod agreement;
mod calls;
mod error;

pub use crate::config::Durability;
use crate::domain::{Email, JobId, Lane, Payload, ValidationErrors};
use crate::metrics::METRICS;
use crate::scripts;
use crate::store::{self, emails};
use crate::stream::{self, Keys};
pub use agreement::PartitionMismatch;
use agreement::{CHECK_WAIT, Check, check_partitions};
use calls::{enqueue_batches, parse_replies};
pub use error::ProducerError;
use error::refused;
use redis::Value;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Jobs per pipeline in [`Producer::send_many`].
const CHUNK: usize = 500;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub lane: Lane,
    pub idempotency_key: Option<String>,
    pub payload: Payload,
}

/// A job validated and serialized, ready for `enqueue.lua`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: JobId,
    pub lane: Lane,
    pub partition: u16,
    pub idempotency_key: Option<String>,
    pub payload_json: String,
    pub enqueued_at_ms: i64,
    pub due_ms: i64,
    pub email: Email,
}

impl Prepared {
    /// The `queued` row Postgres keeps for this job when it is recorded before a worker sees it
    /// (accepted by the API, or fanned out by a schedule).
    pub fn ledger_row(&self) -> crate::store::emails::NewRow {
        crate::store::emails::NewRow::of(crate::store::emails::JobFacts {
            id: self.id,
            lane: self.lane,
            partition: self.partition,
            idempotency_key: self.idempotency_key.as_deref(),
            email: &self.email,
            payload_json: &self.payload_json,
            enqueued_at_ms: self.enqueued_at_ms,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The new job's id, or the first job's id when the idempotency key was already used.
    pub id: JobId,
    /// False when the idempotency key was seen within its TTL and nothing was added.
    pub added: bool,
}

/// The Redis pool the shared settings describe (32 connections).
pub fn redis_pool(g: &crate::config::Global) -> redis::RedisResult<crate::stream::Pool> {
    stream::pool(
        &g.redis_target(),
        Duration::from_millis(g.redis_timeout_ms),
        32,
    )
}

#[derive(Clone)]
pub struct Producer {
    pool: crate::stream::Pool,
    keys: Keys,
    /// The partition-count check, started by the first send (see [`Producer::send_prepared`]).
    agreement: Arc<OnceLock<Check>>,
    dedup_ttl: Duration,
    max_payload: usize,
    level: Level,
}

/// What [`Producer::send_prepared`] does after the Redis pipeline: a [`Durability`] with what
/// it needs, so a ledger without a pool cannot exist.
#[derive(Clone)]
enum Level {
    Ledger(PgPool),
    Replicated { replicas: u32, wait: Duration },
    Redis,
}

/// Postgres connections of a producer's ledger.
const LEDGER_CONNECTIONS: u32 = 4;

impl Producer {
    /// A producer at durability `ledger`: Redis at `redis_url`, the ledger in the database at
    /// `database_url` (connected on the first send).
    pub async fn connect(
        redis_url: &str,
        database_url: &str,
        prefix: &str,
        partitions: u16,
    ) -> Result<Self, ProducerError> {
        let pool = stream::pool(redis_url, Duration::from_secs(5), 16).map_err(|source| {
            ProducerError::Redis {
                doing: "configuring the pool",
                source,
            }
        })?;
        let pg = store::connect_lazy(database_url, LEDGER_CONNECTIONS)
            .map_err(ProducerError::LedgerSetup)?;
        Ok(Self::from_pool(pool, Keys::new(prefix, partitions)).with_ledger(pg))
    }

    /// The producer the shared settings describe (URL, prefix, partitions, dedup TTL, payload
    /// limit, durability): what every command and harness that enqueues uses.
    pub fn for_global(g: &crate::config::Global) -> Result<Self, ProducerError> {
        let pool = redis_pool(g).map_err(|source| ProducerError::Redis {
            doing: "configuring the pool",
            source,
        })?;
        let p = Self::from_pool(pool, Keys::new(&g.prefix, g.partitions))
            .with_dedup_ttl(Duration::from_secs(g.dedup_ttl_secs))
            .with_max_payload(g.max_payload_bytes);
        Ok(match g.durability {
            Durability::Ledger => {
                let pg = store::connect_lazy(g.database_url.expose(), LEDGER_CONNECTIONS).map_err(
                    |source| ProducerError::Ledger {
                        source,
                        sent_anyway: 0,
                    },
                )?;
                p.with_ledger(pg)
            }
            Durability::Replicated => p.with_replicas(
                g.durability_replicas,
                Duration::from_millis(g.durability_wait_ms),
            ),
            Durability::Redis => p,
        })
    }

    /// A producer on `pool` at durability `redis`: the building block the others start from.
    pub fn from_pool(pool: crate::stream::Pool, keys: Keys) -> Self {
        Producer {
            pool,
            keys,
            agreement: Default::default(),
            dedup_ttl: Duration::from_secs(86_400),
            max_payload: 256 * 1024,
            level: Level::Redis,
        }
    }

    /// Durability `ledger`, the `queued` rows written through `pg`.
    pub fn with_ledger(mut self, pg: PgPool) -> Self {
        self.level = Level::Ledger(pg);
        self
    }

    /// Durability `replicated`: each send waits up to `wait` for `replicas` replicas of every
    /// master it wrote to.
    pub fn with_replicas(mut self, replicas: u32, wait: Duration) -> Self {
        self.level = Level::Replicated { replicas, wait };
        self
    }

    /// Durability `redis`.
    pub fn redis_only(mut self) -> Self {
        self.level = Level::Redis;
        self
    }

    /// Close the ledger's Postgres pool (at `ledger`), for a producer that is done: its
    /// connections end, and their statistics reach `pg_stat_database`.
    pub async fn close(&self) {
        if let Level::Ledger(pg) = &self.level {
            pg.close().await;
        }
    }

    pub fn durability(&self) -> Durability {
        match self.level {
            Level::Ledger(_) => Durability::Ledger,
            Level::Replicated { .. } => Durability::Replicated,
            Level::Redis => Durability::Redis,
        }
    }

    pub fn with_dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Validate and serialize a job without touching Redis.
    pub fn prepare(&self, job: NewJob) -> Result<Prepared, ProducerError> {
        self.prepare_as(job, JobId::new())
    }

    /// [`Producer::prepare`] with a given id: for jobs whose id must be the same every time
    /// they are made (a schedule's fan-out derives it from schedule, tick and member).
    pub fn prepare_as(&self, job: NewJob, id: JobId) -> Result<Prepared, ProducerError> {
        if let Some(k) = &job.idempotency_key
            && (k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                || k.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(ValidationErrors::single(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes without spaces or control characters"),
            )
            .into());
        }
        let payload_json = serde_json::to_string(&job.payload)
            .map_err(|e| ValidationErrors::single("payload", e.to_string()))?;
        if payload_json.len() > self.max_payload {
            return Err(ProducerError::TooLarge {
                size: payload_json.len(),
                limit: self.max_payload,
            });
        }
        let email = Email::try_from(job.payload)?;
        email.check_lane(job.lane)?;
        crate::render::check_inline(&email)?;
        let routing = job
            .idempotency_key
            .clone()
            .unwrap_or_else(|| id.to_string());
        let now_ms = chrono::Utc::now().timestamp_millis();
        Ok(Prepared {
            id,
            lane: job.lane,
            partition: self.keys.partition_for(&routing),
            idempotency_key: job.idempotency_key,
            due_ms: email.send_at.map(|t| t.timestamp_millis()).unwrap_or(0),
            payload_json,
            enqueued_at_ms: now_ms,
            email,
        })
    }

    /// Producers and workers must agree on the partition count (`stream::partitions`). The
    /// first send starts the check; sends wait for its answer at most [`CHECK_WAIT`] after it
    /// began, and once it found a mismatch every send is refused.
    async fn check_partitions(&self) -> Result<(), ProducerError> {
        let (rx, began) = self.agreement.get_or_init(|| {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(check_partitions(self.pool.clone(), self.keys.clone(), tx));
            (rx, tokio::time::Instant::now())
        });
        let mut rx = rx.clone();
        if rx.borrow().is_none() {
            let _ =
                tokio::time::timeout_at(*began + CHECK_WAIT, rx.wait_for(Option::is_some)).await;
        }
        match &*rx.borrow() {
            Some(Err(m)) => Err(ProducerError::Partitions(m.clone())),
            _ => Ok(()),
        }
    }

    pub async fn send(&self, job: NewJob) -> Result<Enqueued, ProducerError> {
        let p = self.prepare(job)?;
        let mut out = self.send_prepared(std::slice::from_ref(&p)).await?;
        out.pop()
            .ok_or_else(|| ProducerError::Protocol("empty reply".into()))
    }

    /// Validate every job first (errors name the index: `[3].to[0]`), then enqueue them all,
    /// pipelined. Returns one [`Enqueued`] per job, in order.
    pub async fn send_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, ProducerError> {
        let mut prepared = Vec::with_capacity(jobs.len());
        let mut errors = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            match self.prepare(job) {
                Ok(p) => prepared.push(p),
                Err(ProducerError::Invalid(e)) => errors.extend(e.prefixed(&format!("[{i}].")).0),
                Err(ProducerError::TooLarge { size, limit }) => errors.extend(
                    ValidationErrors::single(
                        format!("[{i}].payload"),
                        format!("is {size} bytes; the limit is {limit}"),
                    )
                    .0,
                ),
                Err(e) => return Err(e),
            }
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors).into());
        }
        self.send_prepared(&prepared).await
    }

    /// Enqueue already prepared jobs, pipelined in chunks, at this producer's [`Durability`]:
    /// a batch that fails any step (a Redis call, the replicas' confirmation, the ledger's
    /// rows) is taken back whole and reported failed.
    pub async fn send_prepared(
        &self,
        prepared: &[Prepared],
    ) -> Result<Vec<Enqueued>, ProducerError> {
        let (out, mut conn, done) = self.enqueue(prepared).await?;
        match &self.level {
            Level::Redis => {}
            Level::Replicated { replicas, wait } => {
                let streams: Vec<String> = done
                    .iter()
                    .map(|(c, b)| self.stream_keys(&chunk_of(prepared, *c)[b[0]]).0)
                    .collect();
                let refusal =
                    match stream::conn::confirm_replicated(&mut conn, &streams, *replicas, *wait)
                        .await
                    {
                        Ok(n) if n >= i64::from(*replicas) => None,
                        Ok(confirmed) => Some(ProducerError::NotReplicated {
                            wanted: *replicas,
                            confirmed,
                            wait_ms: wait.as_millis() as u64,
                            sent_anyway: 0,
                        }),
                        Err(source) => Some(ProducerError::Redis {
                            doing: "waiting for the replicas",
                            source,
                        }),
                    };
                if let Some(mut e) = refusal {
                    let read = self.take_back(&mut conn, prepared, &done).await;
                    if let ProducerError::NotReplicated { sent_anyway, .. } = &mut e {
                        *sent_anyway = read;
                    }
                    return Err(e);
                }
            }
            Level::Ledger(pg) => {
                let rows = ledger_rows(prepared, &out);
                if let Err(source) = emails::insert_queued(pg, &rows).await {
                    let sent_anyway = self.take_back(&mut conn, prepared, &done).await;
                    return Err(ProducerError::Ledger {
                        source,
                        sent_anyway,
                    });
                }
            }
        }
        count_enqueued(prepared, &out);
        Ok(out)
    }

    /// Enqueue at durability `redis`, whatever this producer's: for a caller that keeps its
    /// own record of the jobs (a schedule's fan-out writes their rows before it pushes them).
    pub async fn push_prepared(
        &self,
        prepared: &[Prepared],
    ) -> Result<Vec<Enqueued>, ProducerError> {
        let (out, _, _) = self.enqueue(prepared).await?;
        count_enqueued(prepared, &out);
        Ok(out)
    }

    /// The Redis pipelines of a send, and the calls that added jobs (what a take-back undoes).
    async fn enqueue(&self, prepared: &[Prepared]) -> Result<Sent, ProducerError> {
        self.check_partitions().await?;
        let mut conn = self.pool.get().await?;
        let mut out = Vec::with_capacity(prepared.len());
        let ttl_ms = self.dedup_ttl.as_millis().max(1) as u64;
        // The calls that added jobs so far: what a failure of a later call takes back.
        let mut done: Vec<(usize, Vec<usize>)> = Vec::new();
        for (c, chunk) in prepared.chunks(CHUNK).enumerate() {
            let batches = enqueue_batches(chunk);
            let cmds = batches
                .iter()
                .map(|b| self.enqueue_cmd(chunk, b, ttl_ms))
                .collect();
            let results = match scripts::run_pipeline(&mut *conn, cmds).await {
                Ok(r) => r,
                Err(source) => {
                    let sent_anyway = self.take_back(&mut conn, prepared, &done).await;
                    return Err(refused(source, sent_anyway));
                }
            };
            let mut got: Vec<Option<Enqueued>> = vec![None; chunk.len()];
            let mut failed = None;
            for (b, r) in batches.iter().zip(results) {
                match r {
                    // A call Redis ran added its jobs, whatever its neighbours' fate.
                    Ok(v) => {
                        done.push((c, b.clone()));
                        if failed.is_none() {
                            let replies = parse_replies(&v)?;
                            if replies.len() != b.len() {
                                return Err(ProducerError::Protocol(format!(
                                    "{} replies for {} jobs",
                                    replies.len(),
                                    b.len()
                                )));
                            }
                            for (&i, e) in b.iter().zip(replies) {
                                got[i] = Some(e);
                            }
                        }
                    }
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            if let Some(source) = failed {
                let sent_anyway = self.take_back(&mut conn, prepared, &done).await;
                return Err(refused(source, sent_anyway));
            }
            for e in got {
                out.push(e.ok_or_else(|| ProducerError::Protocol("a job got no reply".into()))?);
            }
        }
        Ok((out, conn, done))
    }

    /// Take back every job the calls in `done` added (`lua/unenqueue.lua`), so a batch
    /// reported failed enqueued nothing; returns how many a worker had read already (those
    /// stay, and will be sent).
    async fn take_back(
        &self,
        conn: &mut crate::stream::conn::Connection,
        prepared: &[Prepared],
        done: &[(usize, Vec<usize>)],
    ) -> usize {
        let mut cmds = Vec::new();
        for (c, batch) in done {
            let chunk = chunk_of(prepared, *c);
            let (stream, delayed) = self.stream_keys(&chunk[batch[0]]);
            let mut keys = vec![stream, delayed];
            keys.extend(batch.iter().map(|&i| self.dedup_key(&chunk[i])));
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut cmd = scripts::UNENQUEUE.call(&refs);
            cmd.arg(crate::stream::GROUP);
            for &i in batch {
                cmd.arg(chunk[i].id.to_string()).arg(chunk[i].due_ms);
            }
            cmds.push(cmd);
        }
        let mut sent_anyway = 0;
        if !cmds.is_empty() {
            match scripts::run_pipeline(&mut **conn, cmds).await {
                Ok(results) => {
                    for r in results {
                        match r {
                            Ok(Value::Array(kept)) => sent_anyway += kept.len(),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error.message = %e, "could not take back part of a failed batch")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error.message = %e, "could not take back a failed batch"),
            }
        }
        sent_anyway
    }
}

/// What [`Producer::enqueue`] hands on: one reply per job, the connection the writes went
/// over (a `WAIT` must follow on it), and the calls that added jobs as (chunk, indexes).
type Sent = (
    Vec<Enqueued>,
    crate::stream::conn::Connection,
    Vec<(usize, Vec<usize>)>,
);

/// The `queued` rows of the jobs a send added (a key already taken added no job): what the
/// ledger writes, and what the API records at the other levels.
pub fn ledger_rows(prepared: &[Prepared], out: &[Enqueued]) -> Vec<emails::NewRow> {
    prepared
        .iter()
        .zip(out)
        .filter(|(_, e)| e.added)
        .map(|(p, _)| p.ledger_row())
        .collect()
}

/// Chunk `c` of a send.
fn chunk_of(prepared: &[Prepared], c: usize) -> &[Prepared] {
    &prepared[c * CHUNK..(c * CHUNK + CHUNK).min(prepared.len())]
}

fn count_enqueued(prepared: &[Prepared], out: &[Enqueued]) {
    for (p, e) in prepared.iter().zip(out) {
        METRICS
            .enqueued
            .with_label_values(&[p.lane.as_str(), if e.added { "added" } else { "duplicate" }])
            .inc();
    }
}
