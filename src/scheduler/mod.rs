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
mod pass;
mod plan;
mod small;

use crate::lease::{self, Acquired, FenceError, Lease, LeaseKeys};
use crate::metrics::METRICS;
use crate::producer::Producer;
use crate::store::StoreError;
use crate::store::schedules::{self, Run};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fanout::{member_idempotency_key, member_job_id};
pub use plan::{PlanItem, plan};

/// How often a leader looks for unfinished fan-outs (interrupted, or failed on an error).
const OPEN_SCAN_EVERY: Duration = Duration::from_secs(2);
/// At most this many unfinished fan-outs are listed per scan (the oldest; the rest on later
/// scans), so a leader behind on 100,000 runs does not read them all every two seconds.
const OPEN_SCAN_MAX: i64 = 10_000;
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
        act(ctx, &lease, &stop, Utc::now()).await;
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

/// What a fan-out error means for the term: a fence rejection ends it.
fn on_fanout_error(e: SchedulerError, stop: &CancellationToken) {
    if e.steps_down() {
        tracing::warn!(error.message = %e, "scheduler: fan-out stopped; stepping down");
        stop.cancel();
    } else {
        tracing::warn!(error.message = %e, "scheduler: fan-out interrupted; it resumes on the next scan");
    }
}

/// Fire due ticks and run fan-outs until the term stops or the local deadline passes. `since`
/// is when the term began (ticks from then on were seen on time).
async fn act(ctx: &Arc<Ctx>, lease: &Arc<Lease>, stop: &CancellationToken, since: DateTime<Utc>) {
    let fanouts = TaskTracker::new();
    let running: Arc<Mutex<HashSet<RunKey>>> = Default::default();
    let slots = Arc::new(Semaphore::new(ctx.settings.max_fanouts.max(1)));
    let batch = ctx.settings.fanout_batch.max(1);
    let mut last_scan: Option<Instant> = None;
    let mut last_count: Option<Instant> = None;
    // Runs not already being fanned out: fresh small ones in groups (one task each), the rest
    // one task per run; each task takes a slot.
    let dispatch = |runs: Vec<Run>| {
        let fresh: Vec<Run> = {
            let mut set = running.lock().unwrap_or_else(|p| p.into_inner());
            runs.into_iter()
                .filter(|r| set.insert((r.schedule_id, r.tick)))
                .collect()
        };
        let (light, heavy): (Vec<Run>, Vec<Run>) =
            fresh.into_iter().partition(|r| small::is_small(r, batch));
        let tasks = small::groups(light, batch)
            .into_iter()
            .chain(heavy.into_iter().map(|r| vec![r]));
        for group in tasks {
            let (ctx, lease, stop, running, slots) = (
                ctx.clone(),
                lease.clone(),
                stop.clone(),
                running.clone(),
                slots.clone(),
            );
            fanouts.spawn(async move {
                let keys: Vec<RunKey> = group.iter().map(|r| (r.schedule_id, r.tick)).collect();
                if let Ok(_slot) = slots.acquire().await {
                    let one_by_one = if group.len() == 1 && !small::is_small(&group[0], batch) {
                        Ok(group)
                    } else {
                        small::run(&ctx, &lease, &stop, group).await
                    };
                    match one_by_one {
                        Ok(runs) => {
                            for r in runs {
                                if let Err(e) = fanout::run(&ctx, &lease, &stop, r).await {
                                    on_fanout_error(e, &stop);
                                    break;
                                }
                            }
                        }
                        Err(e) => on_fanout_error(e, &stop),
                    }
                }
                let mut set = running.lock().unwrap_or_else(|p| p.into_inner());
                for k in &keys {
                    set.remove(k);
                }
            });
        }
    };
    loop {
        if stop.is_cancelled() || !lease.is_valid() {
            break;
        }
        // The backlog gauge, at most once a second (a count over the due range).
        if last_count.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_count = Some(Instant::now());
            if let Ok(n) = schedules::due_count(&ctx.deps.pg, Utc::now()).await {
                METRICS.schedules_due.set(n);
            }
        }
        let mut more_due = false;
        match pass::tick_pass(ctx, lease, since).await {
            Ok(p) => {
                more_due = p.full;
                dispatch(p.fired);
            }
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
            match schedules::open_runs(&ctx.deps.pg, OPEN_SCAN_MAX).await {
                Ok(open) => dispatch(open),
                Err(e) => {
                    tracing::warn!(error.message = %e, "scheduler: listing unfinished fan-outs failed")
                }
            }
        }
        if more_due {
            // The pass was full: the rest of what is due goes next, without a sleep.
            continue;
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
    METRICS.schedules_due.set(0);
    fanouts.close();
    fanouts.wait().await;
}

/// Start the scheduler candidate as a task that ends after `shutdown` (releasing the lease).
pub fn start(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(settings, deps, shutdown))
}
