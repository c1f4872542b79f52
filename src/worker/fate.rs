//! What becomes of a job after its route ended in an error: the one decision between a
//! provider's classified answer and the job's next status. Pure, so every edge is unit-tested;
//! `process.rs` only applies it.

use super::AmbiguousPolicy;
use crate::provider::ErrorClass;
use std::time::Duration;

/// The job's next step after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The provider will never take it as it is: final `failed`.
    Failed,
    /// Nobody can know whether it went out, and it will not be sent again: final `unknown`.
    Unknown,
    /// Nobody can know whether it went out; send again later (at-least-once). The attempt is
    /// logged `unknown`, so a duplicate it causes is counted.
    RetryUnknown,
    /// Not taken; send again later.
    Retry,
    /// Not taken, and the attempts are used up: `dead`, and the entry to the dead stream.
    Dead,
}

/// Decide the fate of attempt number `attempt` (1-based) of at most `max_attempts`, which
/// ended in an error of `class`.
pub fn after_error(
    class: ErrorClass,
    attempt: i32,
    max_attempts: i32,
    ambiguous: AmbiguousPolicy,
) -> Fate {
    let last = attempt >= max_attempts;
    match class {
        ErrorClass::Permanent => Fate::Failed,
        ErrorClass::Ambiguous if last || ambiguous == AmbiguousPolicy::Hold => Fate::Unknown,
        ErrorClass::Ambiguous => Fate::RetryUnknown,
        ErrorClass::Transient | ErrorClass::QuotaAuth if last => Fate::Dead,
        ErrorClass::Transient | ErrorClass::QuotaAuth => Fate::Retry,
    }
}

/// Whether an answer of `class` proves the provider did not take the email, so the route may
/// try the next provider. An ambiguous or permanent answer ends the walk: failing over after
/// it could deliver the email twice (ambiguous) or would only fail again (permanent).
pub fn may_fail_over(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Transient | ErrorClass::QuotaAuth)
}

/// Retry delay for `attempt` (1-based): full jitter over an exponential ceiling, at least the
/// provider's Retry-After.
pub fn backoff(attempt: i32, base_ms: u64, max_ms: u64, retry_after: Option<Duration>) -> Duration {
    let exp = attempt.clamp(1, 30) as u32 - 1;
    let ceiling = base_ms
        .saturating_mul(1u64 << exp.min(40))
        .min(max_ms)
        .max(1);
    let jittered = rand::random_range(0..=ceiling);
    let floor = retry_after.map(|d| d.as_millis() as u64).unwrap_or(0);
    Duration::from_millis(jittered.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AmbiguousPolicy::{Hold, Resend};
    use ErrorClass::*;

    #[test]
    fn a_permanent_error_fails_at_any_attempt() {
        for attempt in [1, 4, 5, 6] {
            assert_eq!(after_error(Permanent, attempt, 5, Resend), Fate::Failed);
            assert_eq!(after_error(Permanent, attempt, 5, Hold), Fate::Failed);
        }
    }

    #[test]
    fn transient_and_quota_errors_retry_until_the_last_attempt_then_die() {
        for class in [Transient, QuotaAuth] {
            assert_eq!(after_error(class, 1, 5, Resend), Fate::Retry);
            assert_eq!(after_error(class, 4, 5, Resend), Fate::Retry);
            assert_eq!(after_error(class, 5, 5, Resend), Fate::Dead);
            // A takeover can push the count past the budget; it is still the end.
            assert_eq!(after_error(class, 6, 5, Resend), Fate::Dead);
            assert_eq!(after_error(class, 4, 5, Hold), Fate::Retry);
        }
    }

    #[test]
    fn an_ambiguous_error_follows_the_policy_and_ends_unknown_on_the_last_attempt() {
        assert_eq!(after_error(Ambiguous, 1, 5, Resend), Fate::RetryUnknown);
        assert_eq!(after_error(Ambiguous, 4, 5, Resend), Fate::RetryUnknown);
        assert_eq!(after_error(Ambiguous, 5, 5, Resend), Fate::Unknown);
        assert_eq!(after_error(Ambiguous, 1, 5, Hold), Fate::Unknown);
    }

    #[test]
    fn only_answers_that_prove_non_acceptance_fail_over() {
        assert!(may_fail_over(Transient));
        assert!(may_fail_over(QuotaAuth));
        assert!(!may_fail_over(Ambiguous));
        assert!(!may_fail_over(Permanent));
    }

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        for attempt in 1..40 {
            let d = backoff(attempt, 1000, 60_000, None);
            assert!(d <= Duration::from_millis(60_000));
            let ceiling = 1000u64
                .saturating_mul(1 << (attempt.min(31) - 1))
                .min(60_000);
            assert!(d.as_millis() as u64 <= ceiling);
        }
        assert!(backoff(1, 10, 100, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
