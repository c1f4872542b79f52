//! Cron expressions with an IANA timezone: 5 fields (minute granularity) or 6 with a leading
//! seconds field, plus the usual nicknames (`@daily`, `@hourly`, ...). Ticks are computed in the
//! schedule's timezone and stored in UTC, so "every day at 08:00 Europe/Paris" stays at 08:00
//! local time across daylight-saving changes (a wall time skipped by a spring-forward gap does
//! not fire that day; one repeated by a fall-back fires once).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CronError {
    #[error("cron expression {expr:?}: {message}")]
    Expression { expr: String, message: String },
    #[error("unknown timezone {0:?}: use an IANA name such as \"Europe/Paris\" or \"UTC\"")]
    Timezone(String),
}

/// A parsed, validated schedule expression.
#[derive(Clone)]
pub struct CronSpec {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSpec({:?} in {})", self.expr, self.tz)
    }
}

impl CronSpec {
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, CronError> {
        let bad = |message: String| CronError::Expression {
            expr: expr.to_owned(),
            message,
        };
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !(trimmed.starts_with('@') || fields == 5 || fields == 6) {
            return Err(bad(format!(
                "has {fields} fields; expected 5 (minute hour day month weekday) or 6 (with a leading seconds field)"
            )));
        }
        if trimmed.chars().any(|c| c.is_control() && c != ' ') {
            return Err(bad("contains control characters".into()));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| bad(e.to_string()))?;
        let tz: Tz = timezone
            .parse()
            .map_err(|_| CronError::Timezone(timezone.to_owned()))?;
        let spec = CronSpec {
            expr: trimmed.to_owned(),
            cron,
            tz,
        };
        // An expression that can never fire (`0 0 30 2 *`) is a mistake, not a schedule.
        if spec.next_after(Utc::now()).is_none() {
            return Err(bad("never matches a time".into()));
        }
        Ok(spec)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The first tick at or after `t`.
    pub fn at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last tick strictly before `t`.
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// A description in English ("At 08:00 on Monday").
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

/// A 6-field expression naming one second of the year (`S M H D Mo *`, in UTC): a schedule that
/// fires once at `t` and then a year later. For one-off campaigns, benchmarks and tests.
pub fn at_second(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{} {} {} {} {} *",
        t.second(),
        t.minute(),
        t.hour(),
        t.day(),
        t.month()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("a UTC time")
    }

    #[test]
    fn five_fields_fire_on_the_minute_and_six_on_the_second() {
        let m = CronSpec::parse("*/15 * * * *", "UTC").expect("valid");
        assert_eq!(
            m.next_after(utc("2026-01-01T10:07:30Z")),
            Some(utc("2026-01-01T10:15:00Z"))
        );
        let s = CronSpec::parse("*/2 * * * * *", "UTC").expect("valid");
        assert_eq!(
            s.next_after(utc("2026-01-01T10:07:30Z")),
            Some(utc("2026-01-01T10:07:32Z"))
        );
        assert_eq!(
            s.at_or_after(utc("2026-01-01T10:07:30Z")),
            Some(utc("2026-01-01T10:07:30Z"))
        );
        assert_eq!(
            s.before(utc("2026-01-01T10:07:30Z")),
            Some(utc("2026-01-01T10:07:28Z"))
        );
        assert_eq!(
            m.before(utc("2026-01-01T10:15:00Z")),
            Some(utc("2026-01-01T10:00:00Z"))
        );
    }

    #[test]
    fn ticks_follow_the_timezone_across_daylight_saving() {
        let daily = CronSpec::parse("0 8 * * *", "Europe/Paris").expect("valid");
        // Winter: 08:00 Paris is 07:00 UTC; summer (after 29 March 2026): 06:00 UTC.
        assert_eq!(
            daily.next_after(utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T07:00:00Z"))
        );
        assert_eq!(
            daily.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T06:00:00Z"))
        );
        let paris: Tz = "Europe/Paris".parse().expect("tz");
        let local = daily
            .next_after(utc("2026-07-01T00:00:00Z"))
            .expect("a tick")
            .with_timezone(&paris);
        assert_eq!(
            local,
            paris
                .with_ymd_and_hms(2026, 7, 1, 8, 0, 0)
                .single()
                .expect("one")
        );
    }

    #[test]
    fn at_second_fires_exactly_then() {
        let t = utc("2026-07-14T09:30:05Z");
        let spec = CronSpec::parse(&at_second(t), "UTC").expect("valid");
        assert_eq!(spec.at_or_after(utc("2026-07-14T09:00:00Z")), Some(t));
        assert_eq!(spec.next_after(t), Some(utc("2027-07-14T09:30:05Z")));
    }

    #[test]
    fn bad_expressions_and_zones_are_rejected_with_the_reason() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "0 0 30 2 *",
            "x y z w v",
        ] {
            assert!(
                matches!(
                    CronSpec::parse(bad, "UTC"),
                    Err(CronError::Expression { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            CronSpec::parse("* * * * *", "Mars/Olympus").err(),
            Some(CronError::Timezone("Mars/Olympus".into()))
        );
        assert!(CronSpec::parse("@daily", "UTC").is_ok());
    }
}
