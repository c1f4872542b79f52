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

use crate::lease::{self, Acquired, FenceError, Lease, LeaseKeys};
use crate::metrics::METRICS;
use crate::producer::Producer;
use crate::store::StoreError;
use crate::store::schedules::{self, Run, Schedule, TickResult};
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

/// At most this many ticks of one schedule are handled in one transaction.
const MAX_TICKS_PER_PASS: usize = 1000;
/// Counting missed ticks stops here (the run's `skipped_ticks` then says "at least").
const MAX_COUNTED_MISSES: usize = 100_000;
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
}

impl Settings {
    pub fn new(owner: impl Into<String>) -> Self {
        Settings {
            owner: owner.into(),
            lease_ttl: Duration::from_secs(10),
            grace: Duration::from_secs(60),
            fanout_batch: 1000,
            max_fanouts: 4,
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
    pub redis: deadpool_redis::Pool,
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
        act(ctx, &lease, &stop).await;
        stop.cancel();
        let _ = keeper.await;
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

fn describe(it: &PlanItem) -> Option<String> {
    match (it.result, it.skipped) {
        (_, 0) => None,
        (TickResult::Fire, n) => Some(format!("caught up once for {n} earlier missed tick(s)")),
        (TickResult::Skipped, n) => Some(format!("{n} missed tick(s) skipped (catch_up = skip)")),
        (TickResult::Stale, n) => Some(format!(
            "{n} earlier missed tick(s) skipped; this one is past stale_after"
        )),
    }
}

/// One tick's fate in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub tick: DateTime<Utc>,
    /// The schedule's `next_tick` after this item.
    pub next: DateTime<Utc>,
    pub result: TickResult,
    /// Missed ticks this item stands for besides its own (catch-up).
    pub skipped: i32,
}

/// Decide what to do with a schedule's due ticks at `now`: the ticks from `next_tick` up to
/// `now`, in order.
///
/// - A tick no more than `grace` late fires (each one: a leader failover, which takes about one
///   lease TTL, loses no tick), unless it is later than `stale_after` (then `stale`).
/// - Ticks more than `grace` late were missed while no leader ran. `skip` records one `skipped`
///   run for all of them; `once` fires the latest of them once (or records it `stale` if even
///   that one is past `stale_after`), standing for the others.
pub fn plan(s: &Schedule, spec: &CronSpec, now: DateTime<Utc>, grace: Duration) -> Vec<PlanItem> {
    let stale_after = chrono::Duration::seconds(i64::from(s.stale_after_secs.max(1)));
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let horizon = now - grace;
    let mut items = Vec::new();
    let mut t = Some(s.next_tick);
    if s.next_tick < horizon {
        // The missed ticks are [next_tick, horizon): count them (up to a cap) and find the last.
        let mut count = 0usize;
        let mut cur = Some(s.next_tick);
        while let Some(c) = cur {
            if c >= horizon || count >= MAX_COUNTED_MISSES {
                break;
            }
            count += 1;
            cur = spec.next_after(c);
        }
        let last = spec
            .before(horizon)
            .filter(|l| *l >= s.next_tick)
            .unwrap_or(s.next_tick);
        let first_live = spec.at_or_after(horizon);
        let next = first_live.unwrap_or(horizon);
        let others = count.saturating_sub(1) as i32;
        let item = match s.catch_up.as_str() {
            "skip" => PlanItem {
                tick: last,
                next,
                result: TickResult::Skipped,
                skipped: others,
            },
            _ => PlanItem {
                tick: last,
                next,
                result: if now - last > stale_after {
                    TickResult::Stale
                } else {
                    TickResult::Fire
                },
                skipped: others,
            },
        };
        items.push(item);
        t = first_live;
    }
    while let Some(tick) = t {
        if tick > now || items.len() >= MAX_TICKS_PER_PASS {
            break;
        }
        let next = spec.next_after(tick);
        items.push(PlanItem {
            tick,
            // A schedule with no further tick parks at the end of time.
            next: next.unwrap_or(DateTime::<Utc>::MAX_UTC),
            result: if now - tick > stale_after {
                TickResult::Stale
            } else {
                TickResult::Fire
            },
            skipped: 0,
        });
        t = next;
    }
    items
}

/// Start the scheduler candidate as a task that ends after `shutdown` (releasing the lease).
pub fn start(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(settings, deps, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("a UTC time")
    }

    fn schedule(
        cron: &str,
        next: &str,
        catch_up: &str,
        stale_after_secs: i32,
    ) -> (Schedule, CronSpec) {
        let s = Schedule {
            id: 1,
            name: "s".into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            template: "t".into(),
            audience_id: 1,
            audience: "a".into(),
            from_addr: "a@example.com".into(),
            lane: "bulk".into(),
            vars: serde_json::json!({}),
            enabled: true,
            catch_up: catch_up.into(),
            stale_after_secs,
            next_tick: at(next),
            created_at: at(next),
        };
        let spec = CronSpec::parse(cron, "UTC").expect("valid");
        (s, spec)
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn ticks_within_the_grace_each_fire_in_order() {
        // A failover left four per-second ticks unfired: all four fire, none is skipped.
        let (s, spec) = schedule("* * * * * *", "2026-01-01T10:00:00Z", "skip", 3600);
        let items = plan(&s, &spec, at("2026-01-01T10:00:03.500Z"), GRACE);
        let ticks: Vec<_> = items.iter().map(|i| (i.tick, i.result)).collect();
        assert_eq!(
            ticks,
            (0..4)
                .map(|n| (
                    at("2026-01-01T10:00:00Z") + chrono::Duration::seconds(n),
                    TickResult::Fire
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            items.last().map(|i| i.next),
            Some(at("2026-01-01T10:00:04Z"))
        );
        // Each item moves next_tick to the following tick: the chain fire() checks.
        for w in items.windows(2) {
            assert_eq!(w[0].next, w[1].tick);
        }
    }

    #[test]
    fn missed_ticks_are_fired_once_or_skipped_by_policy() {
        // Hourly, no leader from 02:00 to 07:30: 02:00 to 07:00 are all more than the grace
        // late, so missed. `once` fires 07:00 for all six; `skip` records them skipped.
        let now = at("2026-01-01T07:30:00Z");
        let (s, spec) = schedule("0 * * * *", "2026-01-01T02:00:00Z", "once", 6 * 3600);
        let items = plan(&s, &spec, now, GRACE);
        assert_eq!(
            items,
            vec![PlanItem {
                tick: at("2026-01-01T07:00:00Z"),
                next: at("2026-01-01T08:00:00Z"),
                result: TickResult::Fire,
                skipped: 5,
            }]
        );
        let (s, spec) = schedule("0 * * * *", "2026-01-01T02:00:00Z", "skip", 6 * 3600);
        let items = plan(&s, &spec, now, GRACE);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].result, TickResult::Skipped);
        assert_eq!(items[0].skipped, 5);
        assert_eq!(items[0].next, at("2026-01-01T08:00:00Z"));
    }

    #[test]
    fn a_tick_past_stale_after_is_never_fired() {
        // Daily at 08:00 with stale_after 1h; the leader returns at 11:00: once would fire
        // 08:00, but it is three hours late.
        let (s, spec) = schedule("0 8 * * *", "2026-01-01T08:00:00Z", "once", 3600);
        let items = plan(&s, &spec, at("2026-01-01T11:00:00Z"), GRACE);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].result, TickResult::Stale);
        // Within the grace but past a short stale_after: stale too.
        let (s, spec) = schedule("* * * * * *", "2026-01-01T10:00:00Z", "once", 5);
        let items = plan(&s, &spec, at("2026-01-01T10:00:10Z"), GRACE);
        assert_eq!(items.first().map(|i| i.result), Some(TickResult::Stale));
        assert_eq!(items.last().map(|i| i.result), Some(TickResult::Fire));
    }

    #[test]
    fn a_long_outage_of_a_per_second_schedule_is_bounded_work() {
        // Two days without a leader: one catch-up item (its count capped), then the grace
        // window's ticks.
        let (s, spec) = schedule("* * * * * *", "2026-01-01T00:00:00Z", "once", 30);
        let items = plan(&s, &spec, at("2026-01-03T00:00:00Z"), GRACE);
        assert!(items.len() <= MAX_TICKS_PER_PASS);
        assert_eq!(items[0].result, TickResult::Stale);
        assert_eq!(items[0].tick, at("2026-01-02T23:58:59Z"));
        assert_eq!(items[0].skipped as usize, MAX_COUNTED_MISSES - 1);
    }

    #[test]
    fn nothing_is_due_before_next_tick() {
        let (s, spec) = schedule("* * * * *", "2026-01-01T10:01:00Z", "once", 3600);
        assert!(plan(&s, &spec, at("2026-01-01T10:00:59Z"), GRACE).is_empty());
    }
}
