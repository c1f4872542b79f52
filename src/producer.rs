//! [`Producer`]: how Rust app servers enqueue email jobs without the CLI.
//!
//! Every job is validated with the same parsers the worker uses before it reaches Redis, placed
//! in its partition, and written by `lua/enqueue.lua` (idempotency check + XADD, or ZADD to the
//! delayed set for a future `send_at`, in one atomic step). `send_many` pipelines a whole batch:
//! one round trip per chunk, not per email.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mailfleet::producer::ProducerError> {
//! use mailfleet::{Producer, NewJob, Lane, Payload};
//! let producer = Producer::connect("redis://127.0.0.1:6379", "mf", 1).await?;
//! let payload: Payload = serde_json::from_value(serde_json::json!({
//!     "to": ["ada@example.com"], "from": "shop@example.com",
//!     "subject": "Your order", "text": "Thanks!"
//! })).unwrap();
//! let job = NewJob { lane: Lane::Tx, idempotency_key: Some("order-42".into()), payload };
//! let enqueued = producer.send(job).await?;
//! println!("{}", enqueued.id);
//! # Ok(()) }
//! ```

use crate::domain::{Email, JobId, Lane, Payload, ValidationErrors};
use crate::metrics::METRICS;
use crate::scripts::{self, ENQUEUE};
use crate::stream::{self, Keys};
use redis::Value;
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

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Redis is at its `maxmemory` and refused the enqueue (`noeviction`): the batch was
    /// taken back, except `sent_anyway` jobs a worker had already read (they will be sent).
    #[error(
        "the queue is full (Redis is at maxmemory); nothing of the batch was enqueued{}",
        if *sent_anyway > 0 { format!(" except {sent_anyway} job(s) a worker had already read") } else { String::new() }
    )]
    QueueFull { sent_anyway: usize },
    #[error("Redis failed while {doing}: {source}")]
    Redis {
        doing: &'static str,
        source: redis::RedisError,
    },
    #[error("no Redis connection available: {0}")]
    Pool(#[from] crate::stream::PoolError),
    #[error("Redis answered enqueue with something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Partitions(PartitionMismatch),
}

/// The Redis pool the shared settings describe (32 connections).
pub fn redis_pool(g: &crate::config::Global) -> redis::RedisResult<crate::stream::Pool> {
    stream::pool(
        &g.redis_target(),
        Duration::from_millis(g.redis_timeout_ms),
        32,
    )
}

/// A running partition-count check: what it found (`None` until Redis answered) and when it
/// began.
type Check = (
    watch::Receiver<Option<Result<(), PartitionMismatch>>>,
    tokio::time::Instant,
);

/// How long sends wait for the first answer of the partition-count check; after that they go
/// on while it keeps retrying, so a stalled Redis node never holds up an enqueue for long.
const CHECK_WAIT: Duration = Duration::from_secs(1);

/// The deployment records another partition count than this producer's: its jobs would land
/// where no worker reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMismatch(String);

impl std::fmt::Display for PartitionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The partition-count check behind [`Producer::send_prepared`]: until Redis answers (every
/// second), or until every clone of the producer is gone.
async fn check_partitions(
    pool: crate::stream::Pool,
    keys: Keys,
    tx: watch::Sender<Option<Result<(), PartitionMismatch>>>,
) {
    use crate::stream::partitions::{PartitionError, agree};
    loop {
        let found = match pool.get().await {
            Ok(mut conn) => match agree(&mut *conn, &keys).await {
                Ok(()) => Some(Ok(())),
                Err(e @ PartitionError::Mismatch { .. }) => {
                    Some(Err(PartitionMismatch(e.to_string())))
                }
                Err(PartitionError::Redis(e)) => {
                    tracing::debug!(error.message = %e, "partition count not checked yet; retrying");
                    None
                }
            },
            Err(_) => None,
        };
        if found.is_some() {
            let _ = tx.send(found);
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(Clone)]
pub struct Producer {
    pool: crate::stream::Pool,
    keys: Keys,
    /// The partition-count check, started by the first send (see [`Producer::send_prepared`]).
    agreement: Arc<OnceLock<Check>>,
    dedup_ttl: Duration,
    max_payload: usize,
}

impl Producer {
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        partitions: u16,
    ) -> Result<Self, ProducerError> {
        let pool = stream::pool(redis_url, Duration::from_secs(5), 16).map_err(|source| {
            ProducerError::Redis {
                doing: "configuring the pool",
                source,
            }
        })?;
        Ok(Self::from_pool(pool, Keys::new(prefix, partitions)))
    }

    /// The producer the shared settings describe (URL, prefix, partitions, dedup TTL, payload
    /// limit): what every command and harness that enqueues uses.
    pub fn for_global(g: &crate::config::Global) -> Result<Self, ProducerError> {
        let pool = redis_pool(g).map_err(|source| ProducerError::Redis {
            doing: "configuring the pool",
            source,
        })?;
        Ok(Self::from_pool(pool, Keys::new(&g.prefix, g.partitions))
            .with_dedup_ttl(Duration::from_secs(g.dedup_ttl_secs))
            .with_max_payload(g.max_payload_bytes))
    }

    pub fn from_pool(pool: crate::stream::Pool, keys: Keys) -> Self {
        Producer {
            pool,
            keys,
            agreement: Default::default(),
            dedup_ttl: Duration::from_secs(86_400),
            max_payload: 256 * 1024,
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

    /// Enqueue already prepared jobs, pipelined in chunks.
    pub async fn send_prepared(
        &self,
        prepared: &[Prepared],
    ) -> Result<Vec<Enqueued>, ProducerError> {
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
                    return Err(self.take_back(&mut conn, prepared, &done, source).await);
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
                return Err(self.take_back(&mut conn, prepared, &done, source).await);
            }
            for (p, e) in chunk.iter().zip(got) {
                let e = e.ok_or_else(|| ProducerError::Protocol("a job got no reply".into()))?;
                METRICS
                    .enqueued
                    .with_label_values(&[
                        p.lane.as_str(),
                        if e.added { "added" } else { "duplicate" },
                    ])
                    .inc();
                out.push(e);
            }
        }
        Ok(out)
    }

    /// A call of the batch failed with `source`: take back every job the calls in `done` added
    /// (`lua/unenqueue.lua`), so a batch reported failed enqueued nothing; say what failed.
    async fn take_back(
        &self,
        conn: &mut crate::stream::conn::Connection,
        prepared: &[Prepared],
        done: &[(usize, Vec<usize>)],
        source: redis::RedisError,
    ) -> ProducerError {
        let full = source.code() == Some("OOM");
        let mut cmds = Vec::new();
        for (c, batch) in done {
            let chunk = &prepared[c * CHUNK..(c * CHUNK + CHUNK).min(prepared.len())];
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
        if full {
            ProducerError::QueueFull { sent_anyway }
        } else {
            ProducerError::Redis {
                doing: "enqueueing",
                source,
            }
        }
    }
}

/// Most jobs in one enqueue.lua call, and most payload bytes: a call is one unit of work for
/// Redis (every other client waits while it runs), so a batch is cut into calls of about a
/// millisecond.
const PER_CALL: usize = 64;
const PER_CALL_BYTES: usize = 1 << 20;

/// The stream a prepared job is written to: (partition, lane, tenant for bulk).
type StreamOf<'a> = (u16, Lane, Option<&'a str>);

fn stream_of(p: &Prepared) -> StreamOf<'_> {
    let tenant = match p.lane {
        Lane::Bulk => p.email.tenant.as_deref(),
        Lane::Tx => None,
    };
    (p.partition, p.lane, tenant)
}

/// Indexes into `chunk` grouped by stream, in order within a stream, cut at [`PER_CALL`] jobs
/// or [`PER_CALL_BYTES`]: one enqueue.lua call each.
fn enqueue_batches(chunk: &[Prepared]) -> Vec<Vec<usize>> {
    // Per stream: its jobs so far in the open call, and their payload bytes.
    let mut open: Vec<(StreamOf<'_>, Vec<usize>, usize)> = Vec::new();
    let mut done = Vec::new();
    for (i, p) in chunk.iter().enumerate() {
        let key = stream_of(p);
        let at = match open.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                open.push((key, Vec::new(), 0));
                open.len() - 1
            }
        };
        let (_, ids, bytes) = &mut open[at];
        if !ids.is_empty()
            && (ids.len() >= PER_CALL || *bytes + p.payload_json.len() > PER_CALL_BYTES)
        {
            done.push(std::mem::take(ids));
            *bytes = 0;
        }
        ids.push(i);
        *bytes += p.payload_json.len();
    }
    done.extend(
        open.into_iter()
            .map(|(_, ids, _)| ids)
            .filter(|v| !v.is_empty()),
    );
    done
}

impl Producer {
    /// One enqueue.lua call for the jobs `batch` names (indexes into `chunk`, one stream).
    /// The stream a prepared job is written to, and its lane's delayed set.
    fn stream_keys(&self, p: &Prepared) -> (String, String) {
        let (partition, lane, tenant) = stream_of(p);
        let stream = self.keys.source(&stream::Source {
            partition,
            lane,
            tenant: tenant.map(Arc::from),
        });
        (stream, self.keys.delayed_of(partition, lane))
    }

    /// A prepared job's dedup marker (a placeholder key for a job without one: enqueue.lua
    /// and unenqueue.lua touch it only with a key).
    fn dedup_key(&self, p: &Prepared) -> String {
        let idem = p.idempotency_key.as_deref().unwrap_or("");
        self.keys
            .dedup(p.partition, if idem.is_empty() { "-" } else { idem })
    }

    fn enqueue_cmd(&self, chunk: &[Prepared], batch: &[usize], ttl_ms: u64) -> redis::Cmd {
        let first = &chunk[batch[0]];
        let (partition, lane, tenant) = stream_of(first);
        let (stream, delayed) = self.stream_keys(first);
        let mut keys = vec![
            self.dedup_key(first),
            stream,
            delayed,
            self.keys.bulk_ring(partition),
            self.keys.bulk_bell(partition),
        ];
        keys.extend(batch[1..].iter().map(|&i| self.dedup_key(&chunk[i])));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut c = ENQUEUE.call(&refs);
        c.arg(first.id.to_string())
            .arg(first.idempotency_key.as_deref().unwrap_or(""))
            .arg(first.enqueued_at_ms)
            .arg(&first.payload_json)
            .arg(ttl_ms)
            .arg(first.due_ms)
            .arg(lane.as_str())
            .arg(tenant.unwrap_or(""))
            .arg(crate::stream::GROUP);
        for &i in &batch[1..] {
            let p = &chunk[i];
            c.arg(p.id.to_string())
                .arg(p.idempotency_key.as_deref().unwrap_or(""))
                .arg(p.enqueued_at_ms)
                .arg(&p.payload_json)
                .arg(p.due_ms);
        }
        c
    }
}

/// `{ id, added, id, added, ... }` from enqueue.lua.
fn parse_replies(v: &Value) -> Result<Vec<Enqueued>, ProducerError> {
    let Value::Array(items) = v else {
        return Err(ProducerError::Protocol(format!("{v:?}")));
    };
    items
        .chunks(2)
        .map(|pair| parse_reply(&Value::Array(pair.to_vec())))
        .collect()
}

fn parse_reply(v: &Value) -> Result<Enqueued, ProducerError> {
    if let Value::Array(items) = v
        && let [Value::BulkString(id), Value::Int(added)] = items.as_slice()
    {
        let id = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ProducerError::Protocol("job id is not a UUID".into()))?;
        return Ok(Enqueued {
            id,
            added: *added == 1,
        });
    }
    Err(ProducerError::Protocol(format!("{v:?}")))
}
