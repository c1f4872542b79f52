//! Fan-outs of many small audiences at once: the daily digest of 100,000 tenants with one
//! member each is 100,000 runs, and one transaction per run (what [`super::fanout::run`]
//! does) would take minutes. A group of fresh runs whose members fit in one fan-out batch is
//! done in two fenced transactions and one Redis pipeline for the whole group:
//!
//! 1. read every member of the group's audiences (one statement), insert their jobs' rows and
//!    move each run's `cursor` to its last member (`pushed` stays 0); commit;
//! 2. push every job (`push_prepared`, pipelined);
//! 3. mark the runs `done` (one statement); commit.
//!
//! The guarantees are the single-run path's: a leader that dies after 1 leaves `pushed <
//! cursor`, and whoever resumes the run (through [`super::fanout::run`]) re-pushes that range,
//! the dedup markers dropping what made it; a stale leader fails at the fence before writing.
//! A run this path cannot take whole (its audience grew past the batch, or another task moved
//! it) is handed back to the caller for the single-run path.

use super::fanout::{self, commit_err};
use super::{Ctx, SchedulerError};
use crate::lease::{self, Lease};
use crate::metrics::METRICS;
use crate::producer::Prepared;
use crate::store::audiences::Member;
use crate::store::schedules::{self, Run};
use crate::store::{emails, ticks};
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// A run this path can take: fresh (nothing written yet) and no larger than one batch.
pub(super) fn is_small(run: &Run, batch: usize) -> bool {
    run.cursor == 0 && run.pushed == 0 && run.enqueued == 0 && (run.total as usize) <= batch
}

/// Split fresh small runs into groups of at most `batch` members and `batch` runs.
pub(super) fn groups(runs: Vec<Run>, batch: usize) -> Vec<Vec<Run>> {
    let batch = batch.max(1);
    let mut out: Vec<Vec<Run>> = Vec::new();
    let mut members = 0usize;
    for run in runs {
        let size = (run.total.max(0) as usize).max(1);
        match out.last_mut() {
            Some(g) if members + size <= batch && g.len() < batch => {
                members += size;
                g.push(run);
            }
            _ => {
                members = size;
                out.push(vec![run]);
            }
        }
    }
    out
}

/// Fan a group out; returns the runs left for the single-run path.
pub(super) async fn run(
    ctx: &Ctx,
    lease: &Lease,
    stop: &CancellationToken,
    group: Vec<Run>,
) -> Result<Vec<Run>, SchedulerError> {
    if stop.is_cancelled() || !lease.is_valid() {
        return Ok(Vec::new());
    }
    let pg = &ctx.deps.pg;
    let batch = ctx.settings.fanout_batch.max(1);
    let ids: Vec<i64> = group.iter().map(|r| r.schedule_id).collect();
    let found: HashMap<i64, _> = schedules::by_ids(pg, &ids)
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let mut tx = lease::fenced(pg, lease).await?;
    let enabled: std::collections::HashSet<i64> = ticks::enabled_of(&mut tx, &ids)
        .await?
        .into_iter()
        .collect();
    // Removed schedules took their runs with them; paused ones halt here (resume goes on).
    let group: Vec<Run> = group
        .into_iter()
        .filter(|r| found.contains_key(&r.schedule_id) && enabled.contains(&r.schedule_id))
        .collect();
    let audiences: Vec<i64> = {
        let mut a: Vec<i64> = group
            .iter()
            .filter_map(|r| found.get(&r.schedule_id).map(|s| s.audience_id))
            .collect();
        a.sort_unstable();
        a.dedup();
        a
    };
    let mut by_audience: HashMap<i64, Vec<Member>> = HashMap::new();
    for (a, m) in ticks::members_of(&mut tx, &audiences, batch as i64).await? {
        by_audience.entry(a).or_default().push(m);
    }
    let (mut here, mut left) = (Vec::new(), Vec::new());
    for run in group {
        let s = &found[&run.schedule_id];
        let members = by_audience.get(&s.audience_id).map_or(&[][..], |m| &m[..]);
        if members.len() > batch {
            left.push(run);
        } else {
            here.push((run, members));
        }
    }
    let mut jobs: Vec<Prepared> = Vec::new();
    let mut moves = Vec::new();
    let mut done = Vec::new();
    for (run, members) in &here {
        let s = &found[&run.schedule_id];
        let prepared = fanout::prepare(ctx, s, run.tick, members);
        if let Some(last) = members.last() {
            moves.push(ticks::Advance {
                schedule_id: run.schedule_id,
                tick: run.tick,
                cursor: last.id,
                added: prepared.len() as i64,
            });
        }
        done.push((run.schedule_id, run.tick));
        jobs.extend(prepared);
    }
    // One insert for the group. A fresh run has no rows yet (its job ids are its own), so
    // every row is new; anything else means the runs are not what was read.
    let rows: Vec<_> = jobs.iter().map(Prepared::ledger_row).collect();
    let added = emails::insert_queued(&mut *tx, &rows).await?;
    if added != rows.len() as u64 {
        drop(tx);
        left.extend(here.into_iter().map(|(r, _)| r));
        return Ok(left);
    }
    if ticks::advance_runs(&mut tx, &moves).await? != moves.len() as u64 {
        // Some run moved under us (another task, an operator): let each go the careful way.
        drop(tx);
        left.extend(here.into_iter().map(|(r, _)| r));
        return Ok(left);
    }
    tx.commit()
        .await
        .map_err(commit_err("committing a group of small fan-outs"))?;
    ctx.deps
        .producer
        .push_prepared(&jobs)
        .await
        .map_err(|e| SchedulerError::Redis {
            doing: "pushing a group of small fan-outs",
            message: e.to_string(),
        })?;
    let mut tx = lease::fenced(pg, lease).await?;
    ticks::finish_runs(&mut tx, &done).await?;
    tx.commit()
        .await
        .map_err(commit_err("finishing a group of small fan-outs"))?;
    METRICS.fanout_members.inc_by(added);
    tracing::debug!(
        runs = done.len(),
        jobs = jobs.len(),
        "fan-out: a group of small audiences done"
    );
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn run(id: i64, total: i32) -> Run {
        Run {
            schedule_id: id,
            tick: Utc::now(),
            status: "fanning_out".into(),
            token: 1,
            fired_at: Utc::now(),
            total,
            enqueued: 0,
            cursor: 0,
            pushed: 0,
            skipped_ticks: 0,
            detail: None,
            finished_at: None,
        }
    }

    #[test]
    fn groups_hold_at_most_a_batch_of_members_and_of_runs() {
        let runs: Vec<Run> = (0..7).map(|i| run(i, if i == 3 { 4 } else { 1 })).collect();
        let sizes: Vec<Vec<i64>> = groups(runs, 4)
            .iter()
            .map(|g| g.iter().map(|r| r.schedule_id).collect())
            .collect();
        assert_eq!(sizes, vec![vec![0, 1, 2], vec![3], vec![4, 5, 6]]);
        // An empty audience still counts as one run of the group.
        let sizes: Vec<usize> = groups((0..5).map(|i| run(i, 0)).collect(), 2)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn only_fresh_runs_no_larger_than_a_batch_are_small() {
        assert!(is_small(&run(1, 10), 10));
        assert!(!is_small(&run(1, 11), 10));
        let mut resumed = run(1, 1);
        resumed.cursor = 5;
        assert!(!is_small(&resumed, 10));
    }
}
