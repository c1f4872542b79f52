//! The worker: reads batches from the lanes, claims them in Postgres, renders and sends them,
//! records outcomes in batches, and only then acks.
//!
//! Tasks (all tracked, all stopped by the shutdown token, joined on drain):
//! - one **reader** per partition and lane ([`reader`]): waits for room in its lane's in-flight
//!   pool (tx has its own, so a bulk backlog never delays a tx read), reads a batch, hands it
//!   to a **batch task** ([`process`]);
//! - **batch tasks**: decode (poison → dead letter), claim the batch in one statement, send the
//!   claimed jobs concurrently, and pass each outcome to the recorder;
//! - one **recorder** per lane ([`recorder`]): takes whatever outcomes are waiting (natural
//!   batching: low load flushes at once, high load gets big batches), records them in one
//!   statement, then acks/retries/dead-letters in one Redis pipeline; tx's recorder, claims
//!   and suppression look-ups use tx's own Postgres connections, so a tx statement never
//!   waits behind a bulk one;
//! - one **promoter**: moves due delayed entries (retries, `send_at`) back to their lanes;
//! - one **observer**: every 5 s, one pipelined read of every queue depth (published as gauges)
//!   that also reports this worker alive with its breakers' states;
//! - one **reclaimer** ([`reclaim`]): takes over entries idle past the visibility timeout (their
//!   consumer crashed) through `lua/reclaim.lua`, into the same batch pipeline;
//! - one **heartbeat** ([`heartbeat`]): keeps the entries and claims of long sends fresh, so a
//!   slow live send is never taken for a crashed one;
//! - one **reconciler** ([`reconcile`]): re-enqueues jobs whose Postgres row stays non-final
//!   long past due (Redis lost their entry).
//!
//! The tx lane's readers, their batch tasks and tx's recorder run on [`TxRuntime`], a runtime
//! thread of their own, over connections opened there; everything else runs on the
//! process's runtime.
//!
//! Architecture Invariant: an entry is acked only after the outcome that justifies the ack is
//! committed in Postgres; an outcome whose claim token lost (the job was reclaimed) is neither
//! recorded nor acked. Drain on shutdown: readers stop, batch tasks finish their sends, the
//! recorder flushes and acks, then the worker exits, all within `drain_timeout`.

mod fate;
mod heartbeat;
mod observer;
mod pauses;
mod persist;
mod process;
mod promoter;
mod reader;
mod reclaim;
mod reconcile;
mod recorder;
mod room;
mod runtime;
mod send;

use crate::provider::Providers;
use crate::render::{Limits, Renderer};
use crate::store::{self, StoreError, templates::Template};
use crate::stream::{Keys, consumer};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::AmbiguousPolicy;
pub use fate::backoff;
pub use recorder::Item;
use runtime::{TX_REDIS_SPARE, TxRuntime};

/// How long a template lookup is cached: a `template put` takes effect within this.
/// How long a worker keeps a template it looked up (or its absence): a template stored now is
/// seen by every worker within this.
pub const TEMPLATE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer: String,
    pub batch_size: usize,
    /// Most bulk entries read and not yet finished (back-pressure for the bulk lane).
    pub max_in_flight: usize,
    /// Bulk's room adapts between a batch per partition and `max_in_flight` (`room::Depth`).
    pub adaptive_in_flight: bool,
    /// Most tx entries read and not yet finished: the tx lane's own pool, so a bulk backlog
    /// never holds the room a transactional email needs to be read.
    pub tx_in_flight: usize,
    /// Bulk sends in flight at once (each holds its slot while it waits for a permit).
    pub send_concurrency: usize,
    /// Tx sends in flight at once: the tx lane's own slots, so bulk sends waiting for a
    /// rate-limit permit never hold the slot a tx send needs.
    pub tx_send_concurrency: usize,
    /// Tx's own Postgres connections per worker, beside the main pool.
    pub tx_pg_pool: u32,
    /// Command and connect timeout of tx's own Redis connections (the main pool's setting).
    pub redis_timeout: Duration,
    pub record_batch: usize,
    pub block_ms: u64,
    pub visibility_timeout_ms: u64,
    /// How often this worker looks for entries idle past the visibility timeout.
    pub reclaim_interval_ms: u64,
    /// Deliveries after which an entry that never got an outcome is dead-lettered.
    pub max_deliveries: u32,
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a job holds its idempotency key in the Postgres backstop (the producers'
    /// `MAILFLEET_DEDUP_TTL_SECS`).
    pub dedup_window: Duration,
    /// The longest Retry-After honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
    /// The longest a send waits for a rate-limit permit (`ratelimit::Limiter::with_deadline`).
    pub permit_wait_max: Duration,
    pub promote_interval_ms: u64,
    /// The longest a read waits for entries to accumulate under load (0: never).
    pub read_linger_ms: u64,
    pub drain_timeout: Duration,
    pub max_payload: usize,
    pub render: Limits,
    /// What to do when a request left and no answer came back.
    pub ambiguous: AmbiguousPolicy,
    /// A non-final job this overdue is re-enqueued by the reconciler; zero turns it off.
    pub reconcile_after: Duration,
    pub reconcile_interval_ms: u64,
    /// One-click unsubscribe links for the bulk lane (None: no List-Unsubscribe header added).
    pub unsubscribe: Option<crate::unsubscribe::Links>,
    /// Tenants' weights in the fair bulk read (others weigh 1), written to Redis at start.
    pub tenant_weights: Vec<(String, u32)>,
}

impl Settings {
    pub fn with_consumer(consumer: impl Into<String>) -> Self {
        Settings {
            consumer: consumer.into(),
            batch_size: 256,
            max_in_flight: 2048,
            adaptive_in_flight: true,
            tx_in_flight: 512,
            send_concurrency: 512,
            tx_send_concurrency: 128,
            tx_pg_pool: 4,
            redis_timeout: Duration::from_secs(5),
            record_batch: 1024,
            block_ms: 1000,
            visibility_timeout_ms: 300_000,
            reclaim_interval_ms: 30_000,
            max_deliveries: 10,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            dedup_window: Duration::from_secs(86_400),
            max_retry_after: Duration::from_secs(3600),
            permit_wait_max: Duration::from_secs(10),
            promote_interval_ms: 250,
            read_linger_ms: 5,
            drain_timeout: Duration::from_secs(30),
            max_payload: 256 * 1024,
            render: Limits::default(),
            ambiguous: AmbiguousPolicy::Resend,
            reconcile_after: Duration::from_secs(900),
            reconcile_interval_ms: 60_000,
            unsubscribe: None,
            tenant_weights: Vec::new(),
        }
    }
}

/// What a worker talks to.
#[derive(Clone)]
pub struct Deps {
    pub redis_url: String,
    pub redis: crate::stream::Pool,
    pub pg: PgPool,
    pub keys: Keys,
    pub providers: Arc<Providers>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Partitions(#[from] crate::stream::partitions::PartitionError),
    #[error("Redis failed while {doing}: {source}")]
    Redis {
        doing: &'static str,
        source: redis::RedisError,
    },
    #[error("no Redis connection available while starting: {0}")]
    Pool(#[from] crate::stream::PoolError),
    #[error("no provider is configured")]
    NoProvider,
    #[error("starting the tx lane's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Template name → (when looked up, the latest version or None when it does not exist).
type TemplateCache = HashMap<String, (Instant, Option<Arc<Template>>)>;

/// State shared by a worker's tasks.
pub(crate) struct Shared {
    pub settings: Settings,
    pub deps: Deps,
    pub renderer: Renderer,
    templates: std::sync::Mutex<TemplateCache>,
    /// Room for entries read but not yet finished (acked, retried or abandoned), one pool per
    /// lane (`[tx, bulk]`): bulk can never hold the room a tx entry needs to be admitted.
    /// Bulk's adapts to the pipeline (`room::Depth`).
    in_flight: [room::Room; 2],
    /// Send slots per lane (`[tx, bulk]`): bulk sends hold theirs while they wait for a
    /// permit, so tx has its own.
    sends: [crate::priority::PrioritySemaphore; 2],
    /// Set once shutdown begins; also what `/readyz` reports.
    pub draining: Arc<AtomicBool>,
    /// Claimed jobs whose outcome is not recorded yet, kept fresh by the heartbeat.
    pub live: heartbeat::Live,
    /// Cluster-wide rate-limit permits (`lua/ratelimit.lua`).
    pub limiter: crate::ratelimit::Limiter,
    /// The pauses in force, refreshed every [`PAUSE_POLL`].
    pub pauses: std::sync::RwLock<crate::stream::pause::Pauses>,
    /// Tx's own Postgres connections (claims, suppressions, records), to the same database as
    /// `deps.pg`: a tx statement never queues for a connection behind bulk statements.
    pg_tx: PgPool,
    /// Tx's own Redis connections (reads, acks), opened on the tx runtime.
    redis_tx: crate::stream::Pool,
    /// The tx lane's runtime ([`TxRuntime`]).
    tx_rt: tokio::runtime::Handle,
}

impl Shared {
    pub fn pauses(&self) -> std::sync::RwLockReadGuard<'_, crate::stream::pause::Pauses> {
        self.pauses.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The lanes readers must not read now.
    pub fn paused_lanes(&self) -> Vec<crate::domain::Lane> {
        let p = self.pauses();
        crate::domain::Lane::ALL
            .into_iter()
            .filter(|&l| p.lane(l))
            .collect()
    }

    /// The Redis pool `lane`'s reads and acks use.
    pub fn redis(&self, lane: crate::domain::Lane) -> &crate::stream::Pool {
        match lane {
            crate::domain::Lane::Tx => &self.redis_tx,
            crate::domain::Lane::Bulk => &self.deps.redis,
        }
    }

    /// The Postgres pool statements for `lane`'s jobs use.
    pub fn pg(&self, lane: crate::domain::Lane) -> &PgPool {
        match lane {
            crate::domain::Lane::Tx => &self.pg_tx,
            crate::domain::Lane::Bulk => &self.deps.pg,
        }
    }

    /// The send slots sends of `lane` take.
    pub fn send_slots(&self, lane: crate::domain::Lane) -> &crate::priority::PrioritySemaphore {
        &self.sends[lane.index()]
    }

    /// The in-flight pool entries of `lane` are admitted from.
    pub(crate) fn room(&self, lane: crate::domain::Lane) -> &room::Room {
        &self.in_flight[lane.index()]
    }

    /// Give back room for `n` finished entries of `lane`.
    pub fn release(&self, lane: crate::domain::Lane, n: usize) {
        self.room(lane).finished(n);
    }

    /// The latest version of each named template, cached for [`TEMPLATE_TTL`]; missing names
    /// are cached as missing. One query for all the batch's misses, on `lane`'s connections.
    pub async fn templates(
        &self,
        lane: crate::domain::Lane,
        names: &[&str],
    ) -> Result<HashMap<String, Arc<Template>>, StoreError> {
        let now = Instant::now();
        let mut out = HashMap::new();
        let mut misses = Vec::new();
        {
            let cache = self.templates.lock().unwrap_or_else(|p| p.into_inner());
            for &n in names {
                match cache.get(n) {
                    Some((at, t)) if now.duration_since(*at) < TEMPLATE_TTL => {
                        if let Some(t) = t {
                            out.insert(n.to_owned(), t.clone());
                        }
                    }
                    _ => misses.push(n.to_owned()),
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        misses.sort();
        misses.dedup();
        let found = store::templates::latest(self.pg(lane), &misses).await?;
        let mut cache = self.templates.lock().unwrap_or_else(|p| p.into_inner());
        for name in misses {
            let t = found.iter().find(|t| t.name == name).cloned().map(Arc::new);
            if let Some(t) = &t {
                out.insert(name.clone(), t.clone());
            }
            cache.insert(name, (now, t));
        }
        Ok(out)
    }
}

/// A running worker's handle: readiness for probes, and the join.
pub struct Running {
    pub draining: Arc<AtomicBool>,
    join: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn join(self) {
        let _ = self.join.await;
    }
}

/// Check the database, prepare Redis, then start the worker's tasks. Returns once they run;
/// they stop when `shutdown` is cancelled and the drain completes ([`Running::join`]).
pub async fn start(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<Running, WorkerError> {
    store::ensure_migrated(&deps.pg).await?;
    if deps.providers.is_empty() {
        return Err(WorkerError::NoProvider);
    }
    {
        let mut conn = deps.redis.get().await?;
        crate::stream::partitions::agree(&mut *conn, &deps.keys).await?;
        consumer::ensure_groups(&mut *conn, &deps.keys)
            .await
            .map_err(|source| WorkerError::Redis {
                doing: "creating consumer groups",
                source,
            })?;
        crate::priority::set_weights(&settings.tenant_weights);
        consumer::set_weights(&mut *conn, &deps.keys, &settings.tenant_weights)
            .await
            .map_err(|source| WorkerError::Redis {
                doing: "writing the tenants' weights",
                source,
            })?;
        crate::scripts::load_all(&mut *conn)
            .await
            .map_err(|source| WorkerError::Redis {
                doing: "loading scripts",
                source,
            })?;
    }
    let mut settings = settings;
    settings.batch_size = settings.batch_size.max(1);
    let tx_rt = TxRuntime::start().map_err(WorkerError::Runtime)?;
    // Tx's connections open now, not at the first tx email (which would pay the handshake),
    // and on the tx runtime, whose thread then drives their sockets.
    let (pg_tx, redis_tx) = {
        let (pg, url) = (deps.pg.clone(), deps.redis_url.clone());
        let (size, timeout) = (settings.tx_pg_pool, settings.redis_timeout);
        // Every tx reader keeps a connection, so fewer than one per partition would starve
        // the readers past the pool's size and the recorder's acks with them.
        let redis_size = usize::from(deps.keys.partitions()) + TX_REDIS_SPARE;
        tx_rt
            .handle
            .spawn(async move {
                let pg_tx = store::companion(&pg, size);
                drop(pg_tx.acquire().await.map_err(|source| {
                    WorkerError::Store(StoreError::Connect {
                        target: store::redacted_target(&pg.connect_options()),
                        source,
                    })
                })?);
                let redis_tx =
                    crate::stream::pool(&url, timeout, redis_size).map_err(|source| {
                        WorkerError::Redis {
                            doing: "configuring tx's connections",
                            source,
                        }
                    })?;
                drop(redis_tx.get().await?);
                Ok::<_, WorkerError>((pg_tx, redis_tx))
            })
            .await
            .map_err(|e| WorkerError::Runtime(std::io::Error::other(e.to_string())))??
    };
    let shared = Arc::new(Shared {
        renderer: Renderer::new(settings.render),
        templates: Default::default(),
        in_flight: room::lanes(&settings, deps.keys.partitions()),
        sends: [
            crate::priority::PrioritySemaphore::new(settings.tx_send_concurrency.max(1)),
            crate::priority::PrioritySemaphore::new(settings.send_concurrency.max(1)),
        ],
        draining: Arc::new(AtomicBool::new(false)),
        live: Default::default(),
        limiter: crate::ratelimit::Limiter::new(deps.redis.clone(), deps.keys.prefix())
            .with_tx_pool(redis_tx.clone())
            .with_deadline(settings.permit_wait_max),
        pauses: Default::default(),
        pg_tx,
        redis_tx,
        tx_rt: tx_rt.handle.clone(),
        settings,
        deps,
    });
    let draining = shared.draining.clone();
    let join = tokio::spawn(async move {
        supervise(shared, shutdown).await;
        // Every tx task has ended with the drain: the tx runtime's thread may stop.
        drop(tx_rt);
    });
    Ok(Running { draining, join })
}

async fn supervise(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (out, [tx_in, bulk_in]) = recorder::Outbox::new();
    let batches = TaskTracker::new();
    let readers = TaskTracker::new();
    // The recorders stop only when every outbox is gone: after readers and batch tasks.
    let recorders = futures::future::join(
        shared.tx_rt.spawn(recorder::run(
            shared.clone(),
            crate::domain::Lane::Tx,
            tx_in,
        )),
        tokio::spawn(recorder::run(
            shared.clone(),
            crate::domain::Lane::Bulk,
            bulk_in,
        )),
    );
    let promoter = tokio::spawn(promoter::run(shared.clone(), shutdown.child_token()));
    let observer = tokio::spawn(observer::run(shared.clone(), shutdown.child_token()));
    let pauser = tokio::spawn(pauses::run(shared.clone(), shutdown.child_token()));
    let reconciler = tokio::spawn(reconcile::run(shared.clone(), shutdown.child_token()));
    // The heartbeat outlives the drain: sends finishing during it must stay fresh.
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::run(shared.clone(), beat_stop.clone()));
    // One reader per partition and lane: a lane's reads wait only for its own room.
    for p in 0..shared.deps.keys.partitions() {
        for lane in crate::domain::Lane::ALL {
            let read = reader::run(
                shared.clone(),
                p,
                lane,
                out.clone(),
                batches.clone(),
                shutdown.child_token(),
            );
            // A tx reader's batch tasks run where it runs: on the tx runtime.
            match lane {
                crate::domain::Lane::Tx => readers.spawn_on(read, &shared.tx_rt),
                crate::domain::Lane::Bulk => readers.spawn(read),
            };
        }
    }
    // Reclaim feeds the same pipeline, so it drains with the readers.
    readers.spawn(reclaim::run(
        shared.clone(),
        out.clone(),
        batches.clone(),
        shutdown.child_token(),
    ));
    drop(out);
    readers.close();
    tracing::info!(consumer = %shared.settings.consumer, partitions = shared.deps.keys.partitions(), "worker started");

    shutdown.cancelled().await;
    shared.draining.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + shared.settings.drain_timeout;
    readers.wait().await;
    batches.close();
    if tokio::time::timeout_at(deadline, batches.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain deadline passed with sends in flight; their entries stay pending for reclaim"
        );
    }
    match tokio::time::timeout_at(deadline, recorders).await {
        Ok(_) => tracing::info!("drained: every finished send is recorded and acked"),
        Err(_) => {
            tracing::warn!("drain deadline passed while recording; unrecorded entries stay pending")
        }
    }
    beat_stop.cancel();
    let _ = tokio::join!(promoter, observer, pauser, reconciler, beat);
}
