//! Audience fan-out: one job per subscribed member for one tick, resumable by any leader.
//!
//! Members are read in id order, a batch at a time. Each batch is one fenced transaction that
//! reads the batch, inserts its jobs' `emails` rows (`queued`) and moves the run's `cursor`; only
//! after the commit are the jobs XADDed (`enqueue.lua`, pipelined). A job's id and idempotency
//! key derive from (schedule, tick, member), so:
//! - the `emails` primary key makes a member's job exist at most once per tick in Postgres;
//! - the dedup marker makes its entry exist at most once on the stream;
//! - a leader that dies between a commit and its XADDs leaves `pushed < cursor`; the next one
//!   re-pushes exactly that range (its markers drop whatever already made it), then continues.
//!
//! A stale leader's batch fails at the fence, before anything is written or pushed.

use super::{Ctx, SchedulerError};
use crate::domain::{JobId, Lane, Payload};
use crate::lease::{self, Lease};
use crate::metrics::METRICS;
use crate::producer::{NewJob, Prepared, ProducerError};
use crate::store::schedules::{self, Run, Schedule};
use crate::store::{StoreError, audiences, emails};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The id of `member`'s job for `tick` of `schedule_id`: a UUIDv7 whose timestamp is the tick
/// and whose other bits are a hash of the three, so every leader makes the same one.
pub fn member_job_id(schedule_id: i64, tick: DateTime<Utc>, member_id: i64) -> JobId {
    let ms = tick.timestamp_millis().max(0) as u64;
    let mut h = Sha256::new();
    h.update(b"mailfleet/fanout/v1");
    h.update(schedule_id.to_be_bytes());
    h.update(ms.to_be_bytes());
    h.update(member_id.to_be_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&digest[..10]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    JobId::from(Uuid::from_bytes(b))
}

/// The idempotency key of a member's job: also its partition's routing key.
pub fn member_idempotency_key(schedule_id: i64, tick: DateTime<Utc>, member_id: i64) -> String {
    format!(
        "sched:{schedule_id}:{}:{member_id}",
        tick.timestamp_millis()
    )
}

pub(super) fn commit_err(doing: &'static str) -> impl FnOnce(sqlx::Error) -> SchedulerError {
    move |source| SchedulerError::Store(StoreError::Query { doing, source })
}

fn redis_err(e: ProducerError) -> SchedulerError {
    SchedulerError::Redis {
        doing: "pushing fanned-out jobs",
        message: e.to_string(),
    }
}

/// Drive one run to `done` (or `stale`), starting where its row says. Returns early, leaving
/// the run open for the next scan or leader, when `stop` is cancelled.
pub(super) async fn run(
    ctx: &Ctx,
    lease: &Lease,
    stop: &CancellationToken,
    run: Run,
) -> Result<(), SchedulerError> {
    let Some(schedule) = schedules::by_id(&ctx.deps.pg, run.schedule_id).await? else {
        return Ok(()); // removed: its runs went with it
    };
    let pg = &ctx.deps.pg;
    let tick = run.tick;
    let batch = ctx.settings.fanout_batch.max(1) as i64;
    let stale_after = chrono::Duration::seconds(i64::from(schedule.stale_after_secs.max(1)));
    let mut remaining = i64::from((run.total - run.enqueued).max(0));
    METRICS.fanout_remaining.add(remaining);
    let result = async {
        let mut cursor = run.cursor;
        if run.pushed < run.cursor {
            repush(ctx, &schedule, tick, run.pushed, run.cursor).await?;
        }
        loop {
            // Each batch is a unit of work: started only while the lease is surely held.
            if stop.is_cancelled() || !lease.is_valid() {
                return Ok(());
            }
            if Utc::now() - tick > stale_after {
                let mut tx = lease::fenced(pg, lease).await?;
                schedules::finish_run(&mut tx, schedule.id, tick, "stale", Some("stale_after passed during the fan-out")).await?;
                tx.commit().await.map_err(commit_err("marking a fan-out stale"))?;
                METRICS.ticks.with_label_values(&["stale"]).inc();
                tracing::warn!(schedule = %schedule.name, tick = %tick, "fan-out stopped: past stale_after");
                return Ok(());
            }
            let mut tx = lease::fenced(pg, lease).await?;
            if schedules::enabled(&mut tx, schedule.id).await? != Some(true) {
                // Paused (or removed) mid-way: stop here; `resume` continues from `cursor`.
                tracing::info!(schedule = %schedule.name, tick = %tick, "fan-out halted: the schedule is paused");
                return Ok(());
            }
            let members =
                audiences::members_after(&mut tx, schedule.audience_id, cursor, batch).await?;
            let Some(last) = members.last().map(|m| m.id) else {
                schedules::finish_run(&mut tx, schedule.id, tick, "done", None).await?;
                tx.commit().await.map_err(commit_err("finishing a fan-out"))?;
                tracing::debug!(schedule = %schedule.name, tick = %tick, "fan-out done");
                return Ok(());
            };
            let jobs = prepare(ctx, &schedule, tick, &members);
            let rows: Vec<_> = jobs.iter().map(Prepared::ledger_row).collect();
            let added = emails::insert_queued(&mut *tx, &rows).await?;
            // `pushed = cursor`: the previous batch was pushed before this one began.
            if !schedules::advance_run(&mut tx, schedule.id, tick, last, cursor, added as i64)
                .await?
            {
                // Finished or moved on by another task: this batch is not ours to write.
                return Ok(());
            }
            tx.commit().await.map_err(commit_err("committing a fan-out batch"))?;
            ctx.deps
                .producer
                .push_prepared(&jobs)
                .await
                .map_err(redis_err)?;
            METRICS.fanout_members.inc_by(added);
            let done = members.len() as i64;
            METRICS.fanout_remaining.sub(done.min(remaining));
            remaining -= done.min(remaining);
            cursor = last;
        }
    }
    .await;
    METRICS.fanout_remaining.sub(remaining);
    result
}

/// The jobs of a batch. A member whose job does not validate (the schedule's sender or vars
/// make an invalid email) is left out and counted, never sent broken.
pub(super) fn prepare(
    ctx: &Ctx,
    schedule: &Schedule,
    tick: DateTime<Utc>,
    members: &[audiences::Member],
) -> Vec<Prepared> {
    let lane: Lane = schedule.lane.parse().unwrap_or(Lane::Bulk);
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let mut vars = match &schedule.vars {
            serde_json::Value::Object(o) => o.clone(),
            _ => Default::default(),
        };
        if let serde_json::Value::Object(o) = &m.vars {
            vars.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let payload = Payload {
            to: vec![m.email.clone()],
            from: schedule.from_addr.clone(),
            template: Some(schedule.template.clone()),
            vars: Some(vars),
            ..Default::default()
        };
        let job = NewJob {
            lane,
            idempotency_key: Some(member_idempotency_key(schedule.id, tick, m.id)),
            payload,
        };
        match ctx
            .deps
            .producer
            .prepare_as(job, member_job_id(schedule.id, tick, m.id))
        {
            Ok(p) => out.push(p),
            Err(e) => {
                METRICS.fanout_invalid.inc();
                tracing::warn!(schedule = %schedule.name, member = m.id, error.message = %e, "fan-out: member's job is invalid; left out");
            }
        }
    }
    out
}

/// Push the jobs of members `(after, through]` that are committed but may not be on their
/// stream: the range a leader that died mid-batch left behind. Jobs already pushed are dropped
/// by their dedup markers; jobs already claimed are no longer `queued` and are skipped.
async fn repush(
    ctx: &Ctx,
    schedule: &Schedule,
    tick: DateTime<Utc>,
    after: i64,
    through: i64,
) -> Result<(), SchedulerError> {
    let ids: Vec<Uuid> =
        audiences::member_ids_between(&ctx.deps.pg, schedule.audience_id, after, through)
            .await?
            .into_iter()
            .map(|m| member_job_id(schedule.id, tick, m).as_uuid())
            .collect();
    let rows = emails::queued_of(&ctx.deps.pg, &ids).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let Ok(payload) = serde_json::from_str::<Payload>(&r.payload) else {
            continue;
        };
        let job = NewJob {
            lane: r.lane.parse().unwrap_or(Lane::Bulk),
            idempotency_key: r.idempotency_key,
            payload,
        };
        if let Ok(p) = ctx.deps.producer.prepare_as(job, JobId::from(r.id)) {
            jobs.push(p);
        }
    }
    let n = jobs.len();
    ctx.deps
        .producer
        .push_prepared(&jobs)
        .await
        .map_err(redis_err)?;
    tracing::info!(schedule = %schedule.name, tick = %tick, jobs = n, "fan-out: re-pushed the last committed batch of an interrupted run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_job_ids_are_deterministic_v7_and_distinct() {
        let t: DateTime<Utc> = "2026-05-01T08:00:00Z".parse().expect("time");
        let a = member_job_id(7, t, 42).as_uuid();
        assert_eq!(a, member_job_id(7, t, 42).as_uuid());
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = a.get_timestamp().expect("a v7 timestamp").to_unix();
        assert_eq!(secs as i64, t.timestamp());
        for other in [
            member_job_id(7, t, 43),
            member_job_id(8, t, 42),
            member_job_id(7, t + chrono::Duration::seconds(1), 42),
        ] {
            assert_ne!(a, other.as_uuid());
        }
    }
}
