//! Which of a schedule's due ticks fire, which are skipped and which are stale: a pure
//! function of the schedule, its expression, the time and the grace, so every rule is unit
//! tested without a database or a clock.

use super::cron::CronSpec;
use crate::store::schedules::{Schedule, TickResult};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// At most this many ticks of one schedule are handled in one transaction.
const MAX_TICKS_PER_PASS: usize = 1000;
/// Counting missed ticks stops here (the run's `skipped_ticks` then says "at least").
const MAX_COUNTED_MISSES: usize = 100_000;

pub(super) fn describe(it: &PlanItem) -> Option<String> {
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
/// `now`, in order. `since` is when this leader began leading: a tick at or after it was seen
/// on time, however long the leader's own backlog kept it, so its lateness is counted up to
/// `since` only (zero for a tick after it), never up to `now`.
///
/// - A tick no more than `grace` late fires (each one: a leader failover, which takes about one
///   lease TTL, loses no tick), unless it is later than `stale_after` (then `stale`).
/// - Ticks more than `grace` late were missed while no leader ran. `skip` records one `skipped`
///   run for all of them; `once` fires the latest of them once (or records it `stale` if even
///   that one is past `stale_after`), standing for the others.
pub fn plan(
    s: &Schedule,
    spec: &CronSpec,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
    grace: Duration,
) -> Vec<PlanItem> {
    let stale_after = chrono::Duration::seconds(i64::from(s.stale_after_secs.max(1)));
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    // Lateness is measured to here: a busy leader's backlog never makes a tick late.
    let seen = since.min(now);
    let late = |tick: DateTime<Utc>| (seen - tick).max(chrono::Duration::zero());
    let horizon = seen - grace;
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
                result: if late(last) > stale_after {
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
            result: if late(tick) > stale_after {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass by a leader that began leading just now.
    fn plan(s: &Schedule, spec: &CronSpec, now: DateTime<Utc>, grace: Duration) -> Vec<PlanItem> {
        super::plan(s, spec, now, now, grace)
    }

    #[test]
    fn a_tick_seen_on_time_fires_however_late_the_leaders_backlog_makes_it() {
        // 20,000 schedules at 09:00: the leader, leading since 08:00, reaches this one at
        // 09:03, past the grace and the stale_after of 60 s. It was not missed: it fires.
        let (s, spec) = schedule("0 9 * * *", "2026-01-01T09:00:00Z", "skip", 60);
        let items = super::plan(
            &s,
            &spec,
            at("2026-01-01T09:03:00Z"),
            at("2026-01-01T08:00:00Z"),
            GRACE,
        );
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].tick, at("2026-01-01T09:00:00Z"));
        assert_eq!(items[0].result, TickResult::Fire);
        assert_eq!(items[0].skipped, 0);
        // A leader that began at 09:02 did not see it on time: two minutes late, it is missed.
        let items = super::plan(
            &s,
            &spec,
            at("2026-01-01T09:03:00Z"),
            at("2026-01-01T09:02:00Z"),
            GRACE,
        );
        assert_eq!(items[0].result, TickResult::Skipped);
        // One that began at 09:00:30 is within the grace and the stale_after of it.
        let items = super::plan(
            &s,
            &spec,
            at("2026-01-01T09:03:00Z"),
            at("2026-01-01T09:00:30Z"),
            GRACE,
        );
        assert_eq!(items[0].result, TickResult::Fire);
    }

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

    #[test]
    fn a_tick_exactly_the_grace_late_still_fires_on_its_own() {
        // next_tick == now - grace: not missed (the rule is "more than the grace late").
        let (s, spec) = schedule("* * * * *", "2026-01-01T10:00:00Z", "skip", 3600);
        let items = plan(&s, &spec, at("2026-01-01T10:01:00Z"), GRACE);
        assert_eq!(items[0].tick, at("2026-01-01T10:00:00Z"));
        assert_eq!(items[0].result, TickResult::Fire, "not skipped");
        assert_eq!(items[0].skipped, 0);
        // A microsecond later it is missed, and `skip` records it skipped.
        let items = plan(
            &s,
            &spec,
            at("2026-01-01T10:01:00Z") + chrono::Duration::microseconds(1),
            GRACE,
        );
        assert_eq!(items[0].result, TickResult::Skipped);
    }

    #[test]
    fn a_tick_due_exactly_now_fires() {
        let (s, spec) = schedule("* * * * *", "2026-01-01T10:00:00Z", "once", 3600);
        let items = plan(&s, &spec, at("2026-01-01T10:00:00Z"), GRACE);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].result, TickResult::Fire);
        assert_eq!(items[0].next, at("2026-01-01T10:01:00Z"));
    }

    #[test]
    fn a_tick_exactly_stale_after_late_still_fires() {
        // Within the grace: 5 s late with stale_after 5 s fires; 6 s late is stale.
        let (s, spec) = schedule("* * * * * *", "2026-01-01T10:00:00Z", "once", 5);
        let items = plan(&s, &spec, at("2026-01-01T10:00:05Z"), GRACE);
        assert_eq!(items[0].result, TickResult::Fire);
        let items = plan(&s, &spec, at("2026-01-01T10:00:06Z"), GRACE);
        assert_eq!(items[0].result, TickResult::Stale);
        assert_eq!(items[1].result, TickResult::Fire);
        // A missed tick caught up with `once` (the latest, 09:00): exactly stale_after late
        // fires too.
        let (s, spec) = schedule("0 * * * *", "2026-01-01T08:00:00Z", "once", 3600);
        let items = plan(&s, &spec, at("2026-01-01T10:00:00Z"), GRACE);
        assert_eq!(
            (items[0].tick, items[0].result),
            (at("2026-01-01T09:00:00Z"), TickResult::Fire)
        );
        let items = plan(
            &s,
            &spec,
            at("2026-01-01T10:00:00Z") + chrono::Duration::microseconds(1),
            GRACE,
        );
        assert_eq!(items[0].result, TickResult::Stale);
    }

    #[test]
    fn a_run_says_what_it_stands_for_only_when_it_stands_for_missed_ticks() {
        let item = |result, skipped| PlanItem {
            tick: at("2026-01-01T10:00:00Z"),
            next: at("2026-01-01T11:00:00Z"),
            result,
            skipped,
        };
        assert_eq!(describe(&item(TickResult::Fire, 0)), None);
        let caught_up = describe(&item(TickResult::Fire, 5)).expect("a note");
        assert!(caught_up.contains("5 earlier missed"), "{caught_up}");
        let skipped = describe(&item(TickResult::Skipped, 3)).expect("a note");
        assert!(
            skipped.contains("3 missed") && skipped.contains("skip"),
            "{skipped}"
        );
        let stale = describe(&item(TickResult::Stale, 2)).expect("a note");
        assert!(stale.contains("stale_after"), "{stale}");
    }
}
