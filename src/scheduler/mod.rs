//! The scheduler: recurring schedules fired by one elected leader, exactly once per tick, and
//! the audience fan-out of each tick.
//!
//! Every `worker` is a candidate ([`run`]). A candidate polls `lua/lease.lua`; the winner starts
//! a *term*: it first writes its token into the fence (from then on every older token's write is
//! rejected), then renews at TTL/3 ([`keep`]) while [`act`] fires due ticks and runs fan-outs.
//! The term ends when a renewal fails, the local deadline passes, a fenced write is rejected,
//! or shutdown begins; at shutdown the lease is released so a successor takes over at once.
//!
//! A tick is handled by [`store::schedules::fire`] inside a fenced transaction: the run row
//! (unique per schedule and tick) and the schedule's advanced `next_tick` commit together or not
//! at all, so a tick is fired at most once, and a new leader starts exactly where the fence says
//! the last one stopped. Which ticks fire, which are skipped, and which are stale is decided by
//! the pure [`plan`] function.
//!
//! Architecture Invariant: every write the scheduler makes goes through `lease::fenced`, and the
//! scheduler never XADDs a job whose row and run progress are not committed first
//! ([`fanout`]).

pub mod admin;
pub mod audience;
pub mod cron;
mod fanout;
mod plan;

use crate::lease::{self, Acquired, FenceError, Lease, LeaseKeys};
use crate::metrics::METRICS;
use crate::producer::Producer;
use crate::store::StoreError;
use crate::store::schedules::{self, Run};
use chrono::{DateTime, Utc};
use cron::CronSpec;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fanout::{member_idempotency_key, member_job_id};
use plan::describe;
pub use plan::{PlanItem, plan};

/// How often a leader looks for unfinished fan-outs (interrupted, or failed on an error).
const OPEN_SCAN_EVERY: Duration = Duration::from_secs(2);
/// The longest the leader sleeps between looks at the schedules (new ones, resumed ones).
const MAX_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Settings {
    /// Unique per process incarnation: the consumer name plus a random nonce.
    pub owner: String,
    pub lease_ttl: Duration,
    /// A tick this late (or less) when the leader first sees it fires normally, whatever the
    /// catch-up policy; later ones were missed while no leader ran.
    pub grace: Duration,
    /// Members per fan-out transaction.
    pub fanout_batch: usize,
    /// Fan-outs a leader runs at once.
    pub max_fanouts: usize,
    /// How often the leader trims the lane streams below what every group has acked
    /// (lua/trim.lua); zero turns it off.
    pub trim_every: Duration,
}

impl Settings {
    pub fn new(owner: impl Into<String>) -> Self {
        Settings {
            owner: owner.into(),
            lease_ttl: Duration::from_secs(10),
            grace: Duration::from_secs(60),
            fanout_batch: 1000,
            max_fanouts: 4,
            trim_every: Duration::from_secs(60),
        }
    }

    /// How often a candidate retries the lease: often enough that a successor takes over within
    /// a fraction of a second of the lease's expiry.
    pub fn poll(&self) -> Duration {
        (self.lease_ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }
}

/// What the scheduler talks to. The producer's keys are the job streams fan-out writes to.
#[derive(Clone)]
pub struct Deps {
    pub pg: PgPool,
    pub redis: crate::stream::Pool,
    pub producer: Producer,
    pub lease_keys: LeaseKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Redis failed while {doing}: {message}")]
    Redis {
        doing: &'static str,
        message: String,
    },
}

impl SchedulerError {
    /// Errors after which this process must stop acting as leader.
    fn steps_down(&self) -> bool {
        matches!(self, SchedulerError::Fence(FenceError::Rejected { .. }))
    }
}

struct Ctx {
    settings: Settings,
    deps: Deps,
}

/// Run as a scheduler candidate until `shutdown`: win the lease, lead, step down, try again.
pub async fn run(settings: Settings, deps: Deps, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx { settings, deps });
    let poll = ctx.settings.poll();
    METRICS.is_leader.set(0);
    tracing::info!(owner = %ctx.settings.owner, ttl_ms = ctx.settings.lease_ttl.as_millis() as u64, "scheduler candidate started");
    while !shutdown.is_cancelled() {
        let wait = match try_acquire(&ctx).await {
            Ok(Acquired::Won(lease)) => {
                term(&ctx, Arc::new(lease), &shutdown).await;
                poll
            }
            Ok(Acquired::Held {
                holder_token,
                expires_in,
            }) => {
                tracing::debug!(
                    holder_token,
                    expires_in_ms = expires_in.as_millis() as u64,
                    "scheduler: lease held"
                );
                poll.min(expires_in + Duration::from_millis(5))
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["lease"]).inc();
                tracing::warn!(error.message = %e, "scheduler: acquiring the lease failed");
                poll
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Retention of the job streams, run by the leader only (one trimmer in the cluster): every
/// `trim_every`, each lane stream loses the entries every consumer group has acked. Trimming
/// is idempotent and never touches a pending or unread entry, so it needs no fence.
async fn trim(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = ctx.settings.trim_every;
    if every.is_zero() {
        return;
    }
    let keys = ctx.deps.producer.keys().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Some(n) =
            crate::stream::consumer::trim_counted(&ctx.deps.redis, &keys, "scheduler").await
        {
            tracing::debug!(removed = n, "scheduler: trimmed the lane streams");
        }
    }
}

async fn try_acquire(ctx: &Ctx) -> Result<Acquired, lease::LeaseError> {
    let mut conn = ctx
        .deps
        .redis
        .get()
        .await
        .map_err(|e| lease::LeaseError::Protocol(format!("no Redis connection: {e}")))?;
    lease::acquire(
        &mut *conn,
        &ctx.deps.pg,
        &ctx.deps.lease_keys,
        lease::SCHEDULER,
        &ctx.settings.owner,
        ctx.settings.lease_ttl,
    )
    .await
}

/// One leadership term.
async fn term(ctx: &Arc<Ctx>, lease: Arc<Lease>, shutdown: &CancellationToken) {
    let token = lease.token().value();
    let stop = shutdown.child_token();
    // The term's first write moves the fence to this token: from here on, any transaction of
    // an earlier leader that is still in flight is rejected.
    match lease::fenced(&ctx.deps.pg, &lease).await {
        Ok(tx) => {
            if let Err(e) = tx.commit().await {
                tracing::warn!(error.message = %e, token, "scheduler: could not write the fence; not leading");
                stop.cancel();
            }
        }
        Err(e) => {
            tracing::warn!(error.message = %e, token, "scheduler: fence refused this token; not leading");
            stop.cancel();
        }
    }
    if !stop.is_cancelled() {
        METRICS.is_leader.set(1);
        METRICS.fence_token.set(token);
        tracing::info!(token, "scheduler: leading");
        let keeper = tokio::spawn(keep(ctx.clone(), lease.clone(), stop.clone()));
        let trimmer = tokio::spawn(trim(ctx.clone(), stop.clone()));
        act(ctx, &lease, &stop).await;
        stop.cancel();
        let _ = keeper.await;
        let _ = trimmer.await;
        METRICS.is_leader.set(0);
        tracing::info!(token, "scheduler: stepped down");
    }
    // Released on every exit, not only at shutdown: a successor need not wait out the TTL.
    if let Ok(mut conn) = ctx.deps.redis.get().await {
        match tokio::time::timeout(Duration::from_secs(2), lease.release(&mut *conn)).await {
            Ok(Ok(true)) => tracing::info!(token, "scheduler: lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error.message = %e, "scheduler: releasing the lease failed")
            }
            Err(_) => tracing::warn!("scheduler: releasing the lease timed out"),
        }
    }
}

/// Renew every TTL/3 until the term stops; any failed renewal ends the term.
async fn keep(ctx: Arc<Ctx>, lease: Arc<Lease>, stop: CancellationToken) {
    let every = lease.ttl() / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // A renewal still unanswered at the deadline is a failed one.
        let until = tokio::time::Instant::from_std(lease.deadline());
        let renewed = tokio::time::timeout_at(until, async {
            let mut conn =
                ctx.deps.redis.get().await.map_err(|e| {
                    lease::LeaseError::Protocol(format!("no Redis connection: {e}"))
                })?;
            lease.renew(&mut *conn).await
        })
        .await;
        let why = match renewed {
            Ok(Ok(true)) => continue,
            Ok(Ok(false)) => "another owner holds the lease".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer before the lease's deadline".to_owned(),
        };
        METRICS.lease_renew_failures.inc();
        tracing::warn!(error.message = %why, token = lease.token().value(), "scheduler: lease renewal failed; stepping down");
        stop.cancel();
        return;
    }
}

type RunKey = (i64, DateTime<Utc>);

/// Fire due ticks and run fan-outs until the term stops or the local deadline passes.
async fn act(ctx: &Arc<Ctx>, lease: &Arc<Lease>, stop: &CancellationToken) {
    let fanouts = TaskTracker::new();
    let running: Arc<Mutex<HashSet<RunKey>>> = Default::default();
    let slots = Arc::new(Semaphore::new(ctx.settings.max_fanouts.max(1)));
    let mut last_scan: Option<Instant> = None;
    let spawn = |run: Run| {
        let key = (run.schedule_id, run.tick);
        if !running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
        {
            return;
        }
        let (ctx, lease, stop, running, slots) = (
            ctx.clone(),
            lease.clone(),
            stop.clone(),
            running.clone(),
            slots.clone(),
        );
        fanouts.spawn(async move {
            if let Ok(_slot) = slots.acquire().await {
                match fanout::run(&ctx, &lease, &stop, run).await {
                    Ok(()) => {}
                    Err(e) if e.steps_down() => {
                        tracing::warn!(error.message = %e, "scheduler: fan-out stopped; stepping down");
                        stop.cancel();
                    }
                    Err(e) => {
                        tracing::warn!(error.message = %e, "scheduler: fan-out interrupted; it resumes on the next scan")
                    }
                }
            }
            running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    };
    loop {
        if stop.is_cancelled() || !lease.is_valid() {
            break;
        }
        match tick_pass(ctx, lease).await {
            Ok(fired) => fired.into_iter().for_each(&spawn),
            Err(e) if e.steps_down() => {
                tracing::warn!(error.message = %e, "scheduler: stepping down");
                break;
            }
            Err(e) => {
                METRICS.store_errors.with_label_values(&["schedule"]).inc();
                tracing::warn!(error.message = %e, "scheduler: tick pass failed");
            }
        }
        // Due ticks first (their lag is what users see), then unfinished fan-outs.
        if last_scan.is_none_or(|t| t.elapsed() >= OPEN_SCAN_EVERY) {
            last_scan = Some(Instant::now());
            match schedules::open_runs(&ctx.deps.pg).await {
                Ok(open) => open.into_iter().for_each(&spawn),
                Err(e) => {
                    tracing::warn!(error.message = %e, "scheduler: listing unfinished fan-outs failed")
                }
            }
        }
        let now = Utc::now();
        let next = schedules::next_due(&ctx.deps.pg).await.ok().flatten();
        let mut wait = next
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE);
        // A due schedule this pass could not handle (a database error) is not retried hot.
        if wait.is_zero() {
            wait = Duration::from_millis(20);
        }
        let deadline = tokio::time::Instant::from_std(lease.deadline());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    stop.cancel();
    fanouts.close();
    fanouts.wait().await;
}

/// Handle every due schedule once; returns the runs to fan out.
async fn tick_pass(ctx: &Ctx, lease: &Lease) -> Result<Vec<Run>, SchedulerError> {
    let now = Utc::now();
    let due = schedules::due(&ctx.deps.pg, now, 100).await?;
    let mut fired = Vec::new();
    for s in due {
        let items = match CronSpec::parse(&s.cron, &s.timezone) {
            Ok(spec) => plan(&s, &spec, now, ctx.settings.grace),
            Err(e) => {
                // Stored schedules were validated when added; this one no longer parses (a
                // timezone left the database). Pause it rather than retry it forever.
                tracing::error!(schedule = %s.name, error.message = %e, "scheduler: pausing a schedule that no longer parses");
                let mut tx = lease::fenced(&ctx.deps.pg, lease).await?;
                schedules::disable(&mut tx, s.id, s.next_tick).await?;
                tx.commit().await.map_err(|source| StoreError::Query {
                    doing: "pausing a broken schedule",
                    source,
                })?;
                continue;
            }
        };
        let mut tx = lease::fenced(&ctx.deps.pg, lease).await?;
        let mut expected = s.next_tick;
        let mut runs = Vec::with_capacity(items.len());
        let mut complete = true;
        for it in &items {
            let detail = describe(it);
            match schedules::fire(
                &mut tx,
                s.id,
                expected,
                it.tick,
                it.next,
                it.result,
                lease.token().value(),
                it.skipped,
                detail.as_deref(),
            )
            .await?
            {
                Some(run) => runs.push(run),
                None => {
                    complete = false;
                    break;
                }
            }
            expected = it.next;
        }
        if !complete {
            // The schedule changed under us (paused, resumed, removed): roll back, re-read.
            continue;
        }
        tx.commit().await.map_err(|source| StoreError::Query {
            doing: "committing fired ticks",
            source,
        })?;
        for run in runs {
            let result = match run.status.as_str() {
                "fanning_out" => "fired",
                other => other,
            };
            METRICS.ticks.with_label_values(&[result]).inc();
            if result == "fired" {
                let lag = (run.fired_at - run.tick).to_std().unwrap_or(Duration::ZERO);
                METRICS.tick_lag.observe(lag.as_secs_f64());
                fired.push(run);
            }
        }
    }
    Ok(fired)
}

/// Start the scheduler candidate as a task that ends after `shutdown` (releasing the lease).
pub fn start(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(settings, deps, shutdown))
}
