//! Defining, pausing and resuming schedules (what `mailfleet schedule` calls). Everything a
//! leader will need is checked here, at definition time: the expression and timezone parse, the
//! audience and template exist, the sender is a valid address, the vars are an object.
//!
//! These writes are operator actions, not leader actions, so they are not fenced; the leader's
//! `fire` is conditional on the `next_tick` it read, so an edit racing a tick is never lost and
//! never double-fires.

use super::cron::{CronError, CronSpec};
use crate::domain::{Lane, Mailbox};
use crate::store::schedules::{self, NewSchedule, Schedule};
use crate::store::{StoreError, audiences, templates};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Cron(#[from] CronError),
    #[error("no audience named {0:?}; create it with `mailfleet audience create`")]
    NoAudience(String),
    #[error("no template named {0:?}; store one with `mailfleet template put`")]
    NoTemplate(String),
    #[error("from: {0}")]
    From(String),
    #[error("vars must be a JSON object")]
    Vars,
    #[error("stale_after must look like 90s, 30m, 6h or 1d and be at least 1s")]
    StaleAfter,
    #[error("catch_up must be `skip` or `once`")]
    CatchUp,
    #[error("a schedule named {0:?} exists already")]
    Exists(String),
    #[error("no schedule named {0:?}")]
    NoSchedule(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A schedule as an operator describes it.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub template: String,
    pub audience: String,
    pub from: String,
    pub lane: Lane,
    pub vars: serde_json::Value,
    pub catch_up: String,
    pub stale_after: String,
    pub paused: bool,
}

/// Validate and store a schedule; its first tick is the first one after now.
pub async fn add(pg: &PgPool, d: &Definition) -> Result<Schedule, AdminError> {
    let spec = CronSpec::parse(&d.cron, &d.timezone)?;
    let catch_up: &'static str = match d.catch_up.as_str() {
        "skip" => "skip",
        "once" => "once",
        _ => return Err(AdminError::CatchUp),
    };
    let stale_after = crate::domain::parse_span(&d.stale_after)
        .filter(|s| *s >= 1 && *s <= i64::from(i32::MAX))
        .ok_or(AdminError::StaleAfter)? as i32;
    if !d.vars.is_object() {
        return Err(AdminError::Vars);
    }
    // The same parser the worker applies to `from`.
    Mailbox::parse(&d.from).map_err(|e| AdminError::From(e.to_string()))?;
    let audience = audiences::get(pg, &d.audience)
        .await?
        .ok_or_else(|| AdminError::NoAudience(d.audience.clone()))?;
    if templates::get(pg, &d.template, None).await?.is_none() {
        return Err(AdminError::NoTemplate(d.template.clone()));
    }
    // From Postgres' clock, which the leader's due query compares with: a CLI host whose
    // clock is off must not place the first tick in the past or skip it.
    let next_tick = spec
        .next_after(crate::store::now(pg).await?)
        .ok_or_else(|| CronError::Expression {
            expr: d.cron.clone(),
            message: "never matches a time".into(),
        })?;
    let new = NewSchedule {
        name: d.name.clone(),
        cron: spec.expr().to_owned(),
        timezone: spec.timezone().to_owned(),
        template: d.template.clone(),
        audience_id: audience.id,
        from_addr: d.from.clone(),
        lane: d.lane.as_str(),
        vars: d.vars.clone(),
        enabled: !d.paused,
        catch_up,
        stale_after_secs: stale_after,
        next_tick,
    };
    schedules::insert(pg, &new)
        .await?
        .ok_or_else(|| AdminError::Exists(d.name.clone()))?;
    schedules::get(pg, &d.name)
        .await?
        .ok_or_else(|| AdminError::NoSchedule(d.name.clone()))
}

/// Pause a schedule: no tick fires until it is resumed.
pub async fn pause(pg: &PgPool, name: &str) -> Result<(), AdminError> {
    if schedules::set_enabled(pg, name, false, None).await? {
        Ok(())
    } else {
        Err(AdminError::NoSchedule(name.to_owned()))
    }
}

/// Resume a schedule from its next tick after now: ticks that passed while it was paused are
/// not fired.
pub async fn resume(pg: &PgPool, name: &str) -> Result<Schedule, AdminError> {
    let s = schedules::get(pg, name)
        .await?
        .ok_or_else(|| AdminError::NoSchedule(name.to_owned()))?;
    if s.enabled {
        // Not paused: moving next_tick now could skip a tick that is due but not yet fired.
        return Ok(s);
    }
    let spec = CronSpec::parse(&s.cron, &s.timezone)?;
    let next = spec
        .next_after(crate::store::now(pg).await?)
        .ok_or_else(|| CronError::Expression {
            expr: s.cron.clone(),
            message: "never matches a time".into(),
        })?;
    schedules::set_enabled(pg, name, true, Some(next)).await?;
    schedules::get(pg, name)
        .await?
        .ok_or_else(|| AdminError::NoSchedule(name.to_owned()))
}
