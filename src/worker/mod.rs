//! The worker: reads batches from the lanes, claims them in Postgres, renders and sends them,
//! records outcomes in batches, and only then acks.
//!
//! Tasks (all tracked, all stopped by the shutdown token, joined on drain):
//! - one **reader** per partition ([`reader`]): waits for in-flight room, reads a batch (tx
//!   strictly before bulk), hands it to a **batch task** ([`process`]);
//! - **batch tasks**: decode (poison → dead letter), claim the batch in one statement, send the
//!   claimed jobs concurrently, and pass each outcome to the recorder;
//! - one **recorder** ([`recorder`]): takes whatever outcomes are waiting (natural batching: low
//!   load flushes at once, high load gets big batches), records them in one statement, then
//!   acks/retries/dead-letters in one Redis pipeline;
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
//! Architecture Invariant: an entry is acked only after the outcome that justifies the ack is
//! committed in Postgres; an outcome whose claim token lost (the job was reclaimed) is neither
//! recorded nor acked. Drain on shutdown: readers stop, batch tasks finish their sends, the
//! recorder flushes and acks, then the worker exits, all within `drain_timeout`.

mod fate;
mod heartbeat;
mod persist;
mod process;
mod reader;
mod reclaim;
mod reconcile;
mod recorder;

use crate::metrics::METRICS;
use crate::provider::Providers;
use crate::render::{Limits, Renderer};
use crate::store::{self, StoreError, templates::Template};
use crate::stream::{Keys, consumer};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::AmbiguousPolicy;
pub use recorder::Item;

/// How long a template lookup is cached: a `template put` takes effect within this.
const TEMPLATE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer: String,
    pub batch_size: usize,
    pub max_in_flight: usize,
    pub send_concurrency: usize,
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
}

impl Settings {
    pub fn with_consumer(consumer: impl Into<String>) -> Self {
        Settings {
            consumer: consumer.into(),
            batch_size: 256,
            max_in_flight: 2048,
            send_concurrency: 512,
            record_batch: 1024,
            block_ms: 1000,
            visibility_timeout_ms: 300_000,
            reclaim_interval_ms: 30_000,
            max_deliveries: 10,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            promote_interval_ms: 250,
            read_linger_ms: 5,
            drain_timeout: Duration::from_secs(30),
            max_payload: 256 * 1024,
            render: Limits::default(),
            ambiguous: AmbiguousPolicy::Resend,
            reconcile_after: Duration::from_secs(900),
            reconcile_interval_ms: 60_000,
            unsubscribe: None,
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
}

/// Template name → (when looked up, the latest version or None when it does not exist).
type TemplateCache = HashMap<String, (Instant, Option<Arc<Template>>)>;

/// State shared by a worker's tasks.
pub(crate) struct Shared {
    pub settings: Settings,
    pub deps: Deps,
    pub renderer: Renderer,
    templates: std::sync::Mutex<TemplateCache>,
    /// Room for entries read but not yet finished (acked, retried or abandoned).
    pub in_flight: Arc<Semaphore>,
    pub sends: Arc<Semaphore>,
    /// Set once shutdown begins; also what `/readyz` reports.
    pub draining: Arc<AtomicBool>,
    /// Claimed jobs whose outcome is not recorded yet, kept fresh by the heartbeat.
    pub live: heartbeat::Live,
    /// Cluster-wide rate-limit permits (`lua/ratelimit.lua`).
    pub limiter: crate::ratelimit::Limiter,
    /// The pauses in force, refreshed every [`PAUSE_POLL`].
    pub pauses: std::sync::RwLock<crate::stream::pause::Pauses>,
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

    /// Give back room for `n` finished entries.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.in_flight.add_permits(n);
            METRICS.in_flight.sub(n as i64);
        }
    }

    /// The latest version of each named template, cached for [`TEMPLATE_TTL`]; missing names
    /// are cached as missing. One query for all the batch's misses.
    pub async fn templates(
        &self,
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
        let found = store::templates::latest(&self.deps.pg, &misses).await?;
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
        crate::scripts::load_all(&mut *conn)
            .await
            .map_err(|source| WorkerError::Redis {
                doing: "loading scripts",
                source,
            })?;
    }
    // Two lanes share a blocking read's batch (half each), so a batch holds at least two.
    let mut settings = settings;
    settings.batch_size = settings.batch_size.max(2);
    let shared = Arc::new(Shared {
        renderer: Renderer::new(settings.render),
        templates: Default::default(),
        in_flight: Arc::new(Semaphore::new(
            settings.max_in_flight.max(settings.batch_size),
        )),
        sends: Arc::new(Semaphore::new(settings.send_concurrency.max(1))),
        draining: Arc::new(AtomicBool::new(false)),
        live: Default::default(),
        limiter: crate::ratelimit::Limiter::new(deps.redis.clone(), deps.keys.prefix()),
        pauses: Default::default(),
        settings,
        deps,
    });
    let draining = shared.draining.clone();
    let join = tokio::spawn(supervise(shared, shutdown));
    Ok(Running { draining, join })
}

async fn supervise(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel::<Item>();
    let batches = TaskTracker::new();
    let readers = TaskTracker::new();
    // The recorder stops only when every sender is gone: after readers and batch tasks.
    let recorder = tokio::spawn(recorder::run(shared.clone(), rx));
    let promoter = tokio::spawn(promote_loop(shared.clone(), shutdown.child_token()));
    let observer = tokio::spawn(observe_loop(shared.clone(), shutdown.child_token()));
    let pauser = tokio::spawn(pause_loop(shared.clone(), shutdown.child_token()));
    let reconciler = tokio::spawn(reconcile::run(shared.clone(), shutdown.child_token()));
    // The heartbeat outlives the drain: sends finishing during it must stay fresh.
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::run(shared.clone(), beat_stop.clone()));
    for p in 0..shared.deps.keys.partitions() {
        readers.spawn(reader::run(
            shared.clone(),
            p,
            tx.clone(),
            batches.clone(),
            shutdown.child_token(),
        ));
    }
    // Reclaim feeds the same pipeline, so it drains with the readers.
    readers.spawn(reclaim::run(
        shared.clone(),
        tx.clone(),
        batches.clone(),
        shutdown.child_token(),
    ));
    drop(tx);
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
    match tokio::time::timeout_at(deadline, recorder).await {
        Ok(_) => tracing::info!("drained: every finished send is recorded and acked"),
        Err(_) => {
            tracing::warn!("drain deadline passed while recording; unrecorded entries stay pending")
        }
    }
    beat_stop.cancel();
    let _ = tokio::join!(promoter, observer, pauser, reconciler, beat);
}

/// How often a worker reads the pauses: a pause is honoured within a second.
const PAUSE_POLL: Duration = Duration::from_millis(500);

/// Every [`PAUSE_POLL`]: read the pauses (one HGETALL) into [`Shared::pauses`] and the
/// `mailfleet_paused` gauge. On a Redis error the last known pauses stay in force.
async fn pause_loop(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let read = match shared.deps.redis.get().await {
            Ok(mut conn) => crate::stream::pause::read(&mut *conn, &shared.deps.keys)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(p) => {
                let changed = *shared.pauses() != p;
                if changed {
                    METRICS.paused.reset();
                    for (scope, name, _) in &p.all {
                        METRICS.paused.with_label_values(&[scope, name]).set(1);
                    }
                    tracing::info!(pauses = p.all.len(), "pauses changed");
                    *shared.pauses.write().unwrap_or_else(|e| e.into_inner()) = p;
                }
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["pauses"]).inc();
                tracing::warn!(error.message = %e, "reading pauses failed; keeping the last ones");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(PAUSE_POLL) => {}
        }
    }
}

/// How often a worker publishes queue depths and reports itself alive.
const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// Every [`OBSERVE_EVERY`]: one pipelined read of every queue's depth, which also reports this
/// worker alive with its breakers' states; the results become gauges.
async fn observe_loop(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let states = shared.deps.providers.breaker_states();
        let read = match shared.deps.redis.get().await {
            Ok(mut conn) => crate::stream::depth::read(
                &mut *conn,
                &shared.deps.keys,
                Some((&shared.settings.consumer, &states)),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(d) => {
                for (lane, l) in &d.lanes {
                    METRICS
                        .queue_length
                        .with_label_values(&[lane])
                        .set(l.length as i64);
                    METRICS
                        .queue_pending
                        .with_label_values(&[lane])
                        .set(l.pending as i64);
                    METRICS
                        .queue_lag
                        .with_label_values(&[lane])
                        .set(l.lag as i64);
                    METRICS
                        .oldest_pending
                        .with_label_values(&[lane])
                        .set(l.oldest_pending_ms as f64 / 1000.0);
                }
                METRICS.delayed.set(d.delayed as i64);
                METRICS.dead_letter_length.set(d.dead as i64);
                METRICS.workers_alive.set(d.workers.len() as i64);
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["observe"]).inc();
                tracing::warn!(error.message = %e, "observer: reading queue depths failed");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(OBSERVE_EVERY) => {}
        }
    }
}

async fn promote_loop(shared: Arc<Shared>, token: CancellationToken) {
    let every = Duration::from_millis(shared.settings.promote_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let moved = match shared.deps.redis.get().await {
            Ok(mut conn) => consumer::promote_due(&mut *conn, &shared.deps.keys, 500).await,
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["promote"]).inc();
                tracing::warn!(error.message = %e, "promoter: no Redis connection");
                continue;
            }
        };
        match moved {
            Ok(n) => METRICS.promoted.inc_by(n),
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["promote"]).inc();
                tracing::warn!(error.message = %e, "promoter: promote failed");
            }
        }
    }
}

/// Retry delay for `attempt` (1-based): full jitter over an exponential ceiling, at least the
/// provider's Retry-After.
pub fn backoff(attempt: i32, base_ms: u64, max_ms: u64, retry_after: Option<Duration>) -> Duration {
    let exp = attempt.clamp(1, 30) as u32 - 1;
    let ceiling = base_ms
        .saturating_mul(1u64 << exp.min(40))
        .min(max_ms)
        .max(1);
    let jittered = rand::random_range(0..=ceiling);
    let floor = retry_after.map(|d| d.as_millis() as u64).unwrap_or(0);
    Duration::from_millis(jittered.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        for attempt in 1..40 {
            let d = backoff(attempt, 1000, 60_000, None);
            assert!(d <= Duration::from_millis(60_000));
            let ceiling = 1000u64
                .saturating_mul(1 << (attempt.min(31) - 1))
                .min(60_000);
            assert!(d.as_millis() as u64 <= ceiling);
        }
        assert!(backoff(1, 10, 100, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
