//! The tick pass: every due schedule's ticks, decided by [`plan`] and recorded in one fenced
//! transaction for the whole pass, one statement per round (a schedule's first due tick in
//! the first round, its second in the next, ...), so 100,000 schedules due at 09:00 cost a
//! hundred statements, not 100,000 transactions.

use super::plan::{describe, plan};
use super::{Ctx, SchedulerError};
use crate::lease::{self, Lease};
use crate::metrics::METRICS;
use crate::store::StoreError;
use crate::store::schedules::{self, Run, Schedule};
use crate::store::ticks::{self, Fire};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;

/// Due schedules handled in one pass (one transaction).
pub(super) const PASS: i64 = 1000;

/// What one pass did.
pub(super) struct Pass {
    /// The runs to fan out.
    pub fired: Vec<Run>,
    /// The pass took [`PASS`] schedules: more may be due now.
    pub full: bool,
}

/// Handle up to [`PASS`] due schedules once. `since` is when this leader began leading: ticks
/// at or after it were seen on time.
pub(super) async fn tick_pass(
    ctx: &Ctx,
    lease: &Lease,
    since: DateTime<Utc>,
) -> Result<Pass, SchedulerError> {
    let now = Utc::now();
    let due = schedules::due(&ctx.deps.pg, now, PASS).await?;
    let full = due.len() as i64 >= PASS;
    if due.is_empty() {
        return Ok(Pass {
            fired: Vec::new(),
            full,
        });
    }
    let mut plans: Vec<Vec<Fire>> = Vec::with_capacity(due.len());
    let mut broken: Vec<&Schedule> = Vec::new();
    for s in &due {
        match super::cron::CronSpec::parse(&s.cron, &s.timezone) {
            Ok(spec) => {
                let mut expected = s.next_tick;
                let fires = plan(s, &spec, now, since, ctx.settings.grace)
                    .iter()
                    .map(|it| {
                        let f = Fire {
                            schedule_id: s.id,
                            expected,
                            tick: it.tick,
                            next: it.next,
                            status: it.result.status(),
                            skipped_ticks: it.skipped,
                            detail: describe(it),
                        };
                        expected = it.next;
                        f
                    })
                    .collect();
                plans.push(fires);
            }
            Err(e) => {
                // Stored schedules were validated when added; this one no longer parses (a
                // timezone left the database). Pause it rather than retry it forever.
                tracing::error!(schedule = %s.name, error.message = %e, "scheduler: pausing a schedule that no longer parses");
                broken.push(s);
            }
        }
    }
    let mut tx = lease::fenced(&ctx.deps.pg, lease).await?;
    for s in broken {
        schedules::disable(&mut tx, s.id, s.next_tick).await?;
    }
    let token = lease.token().value();
    let mut runs = Vec::new();
    // Schedules still in the pass: one whose tick was not recorded (changed under us: paused,
    // edited, removed) leaves it, and is re-read on the next pass.
    let mut live: HashSet<i64> = due.iter().map(|s| s.id).collect();
    for round in 0.. {
        let fires: Vec<Fire> = plans
            .iter()
            .filter_map(|p| p.get(round))
            .filter(|f| live.contains(&f.schedule_id))
            .cloned()
            .collect();
        if fires.is_empty() {
            break;
        }
        let recorded = ticks::fire_many(&mut tx, &fires, token).await?;
        let ids: HashSet<i64> = recorded.iter().map(|r| r.schedule_id).collect();
        live.retain(|id| ids.contains(id));
        runs.extend(recorded);
    }
    tx.commit().await.map_err(|source| StoreError::Query {
        doing: "committing a pass of fired ticks",
        source,
    })?;
    let mut fired = Vec::new();
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
    Ok(Pass { fired, full })
}
