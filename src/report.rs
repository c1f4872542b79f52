//! Run summaries from the provider's side and Postgres: what was sent, lost and duplicated.
//!
//! `lost` counts enqueued jobs the mock never accepted and Postgres does not hold as
//! deliberately unsent (`failed`, `dead`, `suppressed`); `duplicates` counts acceptances beyond
//! the first per job at the mock. Both come from evidence outside the worker, so a worker bug
//! cannot hide them.

use crate::domain::Status;
use crate::mock;
use crate::store::{self, StoreError};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a UUID")]
    BadId { path: String, line: usize },
    #[error("no schedule {0}")]
    NoSchedule(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub enqueued: usize,
    pub by_status: BTreeMap<String, i64>,
    pub lost: usize,
    pub duplicates: u64,
    /// Attempts logged `unknown` (a takeover of an expired claim, a timeout after the request
    /// left): each may legitimately have caused one duplicate.
    pub ambiguous: i64,
    /// Enqueued jobs not in a final state (or with no row at all).
    pub not_final: i64,
    /// Enqueued jobs with no row in Postgres: neither a ledger nor a worker ever recorded
    /// them (Redis lost them before anyone did). Counted in `lost` and `not_final` too: an
    /// acknowledged enqueue nobody sends is lost, whatever lost it.
    pub unseen: usize,
    /// Enqueued jobs `queued` for a `send_at` still to come: neither lost nor late.
    pub scheduled: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Report {
    pub fn count(&self, status: Status) -> i64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }
    pub fn table(&self) -> String {
        let mut s = format!("{:<12} {:>10}\n", "status", "emails");
        for (k, v) in &self.by_status {
            s.push_str(&format!("{k:<12} {v:>10}\n"));
        }
        s.push_str(&format!(
            "{:<12} {:>10}\n{:<12} {:>10}\n{:<12} {:>10}\n",
            "enqueued", self.enqueued, "lost", self.lost, "duplicates", self.duplicates
        ));
        s.push_str(&format!(
            "latency enqueue->recorded: p50 {:.1} ms, p99 {:.1} ms\n",
            self.p50_ms, self.p99_ms
        ));
        s
    }
    /// Whether the run kept the guarantees: nothing lost, every job final, and no duplicate
    /// beyond the ambiguous events (none at all when `strict`).
    pub fn ok(&self, strict: bool) -> bool {
        self.lost == 0
            && self.not_final == 0
            && (self.duplicates as i64) <= self.ambiguous
            && (!strict || self.duplicates == 0)
    }

    /// One JSON object for a chaos scenario.
    pub fn json(
        &self,
        scenario: &str,
        strict: bool,
        dead_letters: u64,
        expect_dead: Option<u64>,
    ) -> serde_json::Value {
        let ok = self.ok(strict) && expect_dead.is_none_or(|n| n == dead_letters);
        serde_json::json!({
            "scenario": scenario,
            "emails": self.enqueued,
            "sent": self.count(Status::Sent),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "ambiguous": self.ambiguous,
            "not_final": self.not_final,
            "failed": self.count(Status::Failed),
            "dead": self.count(Status::Dead),
            "unknown": self.count(Status::Unknown),
            "dead_letters": dead_letters,
            "unseen": self.unseen,
            "scheduled": self.scheduled,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "ok": ok,
        })
    }

    pub fn line(&self, label: &str) -> String {
        let sent = self.count(Status::Sent);
        let failed = self.count(Status::Failed) + self.count(Status::Dead);
        let rate = if self.seconds > 0.0 {
            sent as f64 / self.seconds
        } else {
            0.0
        };
        format!(
            "{label}: sent={sent} failed={failed} lost={} duplicates={} seconds={:.1} emails_per_sec={:.0} p99_ms={:.1}",
            self.lost, self.duplicates, self.seconds, rate, self.p99_ms
        )
    }
}

pub fn read_ids(path: &Path) -> Result<Vec<uuid::Uuid>, ReportError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: p.clone(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            uuid::Uuid::parse_str(l.trim()).map_err(|_| ReportError::BadId {
                path: p.clone(),
                line: i + 1,
            })
        })
        .collect()
}

pub async fn build(
    pool: &PgPool,
    ids_path: &Path,
    mock_log: &Path,
    seconds: f64,
) -> Result<Report, ReportError> {
    let mut ids = read_ids(ids_path)?;
    ids.sort();
    ids.dedup();
    let seen = mock::read_log(mock_log).map_err(|source| ReportError::Io {
        path: mock_log.display().to_string(),
        source,
    })?;
    let summary = store::emails::summary(pool, &ids).await?;
    let unsent: HashSet<uuid::Uuid> = store::emails::ids_with_status(
        pool,
        &ids,
        &[
            Status::Failed,
            Status::Dead,
            Status::Suppressed,
            Status::Cancelled,
        ],
    )
    .await?
    .into_iter()
    .chain(store::emails::duplicates_sent_by_twin(pool, &ids).await?)
    .collect();
    let later: HashSet<uuid::Uuid> = store::emails::scheduled_later(pool, &ids)
        .await?
        .into_iter()
        .collect();
    let lost = ids
        .iter()
        .filter(|id| {
            !seen.contains_key(&id.to_string()) && !unsent.contains(id) && !later.contains(id)
        })
        .count();
    let duplicates = ids
        .iter()
        .filter_map(|id| seen.get(&id.to_string()))
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    let ambiguous = store::emails::ambiguous_attempts(pool, &ids).await?;
    let final_n = store::emails::ids_with_status(pool, &ids, &Status::FINAL)
        .await?
        .len();
    let unseen = ids.len() - store::emails::existing(pool, &ids).await?.len();
    Ok(Report {
        enqueued: ids.len(),
        by_status: summary.by_status.into_iter().collect(),
        lost,
        duplicates,
        ambiguous,
        not_final: (ids.len() - final_n - later.len()) as i64,
        unseen,
        scheduled: later.len(),
        seconds,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
    })
}

/// How a schedule's ticks fared in a run: every tick between the first and `until` should have
/// fired once, none later than the lease TTL + 1 s.
#[derive(Debug, Clone, Default)]
pub struct Ticks {
    pub expected: i64,
    pub fired: i64,
    pub duplicated: i64,
    pub max_lag_ms: f64,
    pub stale_writes_rejected: u64,
    pub max_lag_allowed_ms: f64,
}

impl Ticks {
    pub fn ok(&self) -> bool {
        self.expected > 0
            && self.fired == self.expected
            && self.duplicated == 0
            && self.max_lag_ms <= self.max_lag_allowed_ms
    }
}

/// Judge schedule `name` over its ticks before `until`.
pub async fn ticks(
    pool: &PgPool,
    name: &str,
    until: chrono::DateTime<chrono::Utc>,
    max_lag_allowed_ms: f64,
    stale_writes_rejected: u64,
) -> Result<Ticks, ReportError> {
    let s = store::schedules::get(pool, name)
        .await?
        .ok_or_else(|| ReportError::NoSchedule(name.to_owned()))?;
    let stats = store::schedules::tick_stats(pool, s.id, until).await?;
    let spec = crate::scheduler::cron::CronSpec::parse(&s.cron, &s.timezone)
        .map_err(|e| ReportError::NoSchedule(format!("{name}: {e}")))?;
    let mut expected = 0;
    let mut t = stats.first_tick;
    while let Some(tick) = t
        && tick < until
        && expected < 10_000_000
    {
        expected += 1;
        t = spec.next_after(tick);
    }
    Ok(Ticks {
        expected,
        fired: stats.done,
        duplicated: stats.duplicate_runs + stats.duplicate_jobs,
        max_lag_ms: stats.max_lag_ms.unwrap_or(0.0),
        stale_writes_rejected,
        max_lag_allowed_ms,
    })
}

/// A rate-limited run as the provider saw it (the mock's stats).
#[derive(Debug, Clone, PartialEq)]
pub struct RateJudgement {
    pub limit_per_sec: u32,
    pub max_window_count: u64,
    pub achieved_per_sec: f64,
    pub rejected_by_provider: u64,
}

impl RateJudgement {
    /// The limit held in every window, no 429, and at least 95% of the limit achieved.
    pub fn ok(&self) -> bool {
        self.ok_with(0.95)
    }

    /// The limit held in every window, no 429, and at least `min_share` of the limit achieved
    /// (0: the rate is reported, not judged).
    pub fn ok_with(&self, min_share: f64) -> bool {
        self.rejected_by_provider == 0
            && self.max_window_count <= u64::from(self.limit_per_sec)
            && self.achieved_per_sec >= min_share * f64::from(self.limit_per_sec)
    }
}

/// Judge a run against a provider limit of `limit_per_sec` (a 1-second window).
pub fn rate(stats: &mock::Stats, limit_per_sec: u32) -> RateJudgement {
    let span_s = (stats.last_at_ms - stats.first_at_ms) as f64 / 1000.0;
    // n acceptances span n - 1 gaps.
    let achieved = if span_s > 0.0 {
        stats.received.saturating_sub(1) as f64 / span_s
    } else {
        0.0
    };
    RateJudgement {
        limit_per_sec,
        max_window_count: stats.max_window_count,
        achieved_per_sec: achieved,
        rejected_by_provider: stats.rate_limited + stats.throttled,
    }
}

/// How traffic moved during a primary provider's outage, from the mock log of both
/// providers (each line names its dialect).
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    /// First acceptance by another provider after the outage began, in ms after it.
    pub moved_after_ms: Option<i64>,
    /// First acceptance by the primary after the outage ended, in ms after it.
    pub returned_after_ms: Option<i64>,
    /// Acceptances by the primary during the outage (must be 0: it answered 503).
    pub primary_during_outage: u64,
}

impl Failover {
    /// Moved within 5 s, back within 10 s.
    pub fn ok(&self) -> bool {
        self.primary_during_outage == 0
            && self.moved_after_ms.is_some_and(|ms| ms <= 5_000)
            && self.returned_after_ms.is_some_and(|ms| ms <= 10_000)
    }
}

pub fn failover(
    log: &Path,
    primary: &str,
    from_ms: i64,
    until_ms: i64,
) -> Result<Failover, ReportError> {
    let text = std::fs::read_to_string(log).map_err(|source| ReportError::Io {
        path: log.display().to_string(),
        source,
    })?;
    let mut f = Failover {
        moved_after_ms: None,
        returned_after_ms: None,
        primary_during_outage: 0,
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(dialect), Some(at)) = (v["provider"].as_str(), v["at_ms"].as_i64()) else {
            continue;
        };
        let first = |slot: &mut Option<i64>, after: i64| {
            if at >= after {
                *slot = Some(slot.map_or(at - after, |s| s.min(at - after)));
            }
        };
        if dialect == primary {
            if at >= from_ms && at < until_ms {
                f.primary_during_outage += 1;
            }
            first(&mut f.returned_after_ms, until_ms);
        } else {
            first(&mut f.moved_after_ms, from_ms);
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_nobody_recorded_are_lost_and_shown_as_unseen() {
        let r = Report {
            enqueued: 100,
            lost: 3,
            not_final: 3,
            unseen: 2,
            ..Report::default()
        };
        assert!(!r.ok(false));
        let v = r.json("x", false, 0, None);
        assert_eq!(
            (v["lost"].as_u64(), v["unseen"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(v["ok"], false);
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn a_rate_judgement_always_judges_exactness_and_judges_the_rate_only_when_asked() {
        let r = RateJudgement {
            limit_per_sec: 1000,
            max_window_count: 1000,
            achieved_per_sec: 920.0,
            rejected_by_provider: 0,
        };
        assert!(!r.ok(), "920 of 1,000 is under 95%");
        assert!(r.ok_with(0.0), "reported, not judged");
        let over = RateJudgement {
            max_window_count: 1001,
            ..r.clone()
        };
        assert!(!over.ok_with(0.0), "a window over the limit is never ok");
        let rejected = RateJudgement {
            rejected_by_provider: 1,
            ..r
        };
        assert!(!rejected.ok_with(0.0), "a 429 is never ok");
    }
}
