//! A circuit breaker per provider, per worker.
//!
//! - **Closed**: every request goes through. It opens after `consecutive_failures` failures in
//!   a row, or when failures are at least `error_rate` of the requests in the last `window`
//!   (once `min_requests` were made), or at once on a quota/auth error (the account cannot
//!   send: retrying only burns attempts).
//! - **Open**: nothing goes through until `open_ms` has passed.
//! - **Half-open**: one probe at a time goes through; a success closes the breaker, a failure
//!   opens it again for `open_ms` (constant: the probe costs one request per worker per
//!   `open_ms`, and traffic returns at most `open_ms` after the provider recovers).
//!
//! A failure is a response proving the provider did not take the email (transient, quota/auth)
//! or no response at all (ambiguous). A permanent error (the recipient is invalid) says
//! nothing about the provider's health and counts as a success. Time is passed in, so the
//! rules are tested without sleeping.

use crate::config::BreakerConfig;
use crate::provider::ErrorClass;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The value of `mailfleet_provider_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// Whether a request may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The half-open probe: its result decides the breaker's state.
    Probe,
    /// Open: try again after this long.
    No(Duration),
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// The requests of the last window, counted in buckets.
    recent: Window,
    open_until: Instant,
    /// When it last went from closed to open (failed probes do not move it).
    down_since: Instant,
    probing: bool,
}

/// Buckets per window: a request leaves the count between one window and one window plus a
/// bucket (5%) after it was made.
const BUCKETS: u32 = 20;

/// Request and failure counts over the last window, in [`BUCKETS`] time buckets: O(1) per
/// request and constant memory whatever the rate. (A log of every request cost O(rate ×
/// window) per request: at 7,000 sends/s a fifth of a worker's CPU went to recounting it.)
#[derive(Debug, Default)]
struct Window {
    /// (bucket start, requests, failures), oldest first.
    buckets: VecDeque<(Instant, u32, u32)>,
    total: u32,
    failed: u32,
}

impl Window {
    fn add(&mut self, now: Instant, failed: bool, window: Duration) {
        let width = (window / BUCKETS).max(Duration::from_millis(1));
        while let Some(&(start, n, f)) = self.buckets.front() {
            if now.saturating_duration_since(start) < window + width {
                break;
            }
            self.buckets.pop_front();
            self.total -= n;
            self.failed -= f;
        }
        match self.buckets.back_mut() {
            Some((start, n, f)) if now.saturating_duration_since(*start) < width => {
                *n += 1;
                *f += u32::from(failed);
            }
            _ => self.buckets.push_back((now, 1, u32::from(failed))),
        }
        self.total += 1;
        self.failed += u32::from(failed);
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// What a finished request tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Quota or auth: open now.
    Refused,
}

impl Verdict {
    pub fn of(result: Result<(), ErrorClass>) -> Self {
        match result {
            Ok(()) | Err(ErrorClass::Permanent) => Verdict::Success,
            Err(ErrorClass::QuotaAuth) => Verdict::Refused,
            Err(ErrorClass::Transient | ErrorClass::Ambiguous) => Verdict::Failure,
        }
    }
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let now = Instant::now();
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                recent: Window::default(),
                open_until: now,
                down_since: now,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match s.state {
            State::Closed => Admit::Yes,
            State::Open if now < s.open_until => Admit::No(s.open_until - now),
            State::Open | State::HalfOpen => {
                if s.probing {
                    // One probe at a time; the others wait as if open.
                    return Admit::No(Duration::from_millis(self.cfg.open_ms.min(1000)));
                }
                s.state = State::HalfOpen;
                s.probing = true;
                Admit::Probe
            }
        }
    }

    /// How long the provider has been unusable (zero while closed).
    pub fn down_for(&self, now: Instant) -> Duration {
        let s = self.lock();
        match s.state {
            State::Closed => Duration::ZERO,
            _ => now.saturating_duration_since(s.down_since),
        }
    }

    /// Give back a probe that was admitted but never sent (no permit, shutdown).
    pub fn abandon(&self, admitted: Admit) {
        if admitted == Admit::Probe {
            self.lock().probing = false;
        }
    }

    /// Record a finished request; returns the state afterwards.
    pub fn record(&self, admitted: Admit, verdict: Verdict, now: Instant) -> State {
        let cfg = self.cfg;
        let base = Duration::from_millis(cfg.open_ms);
        let mut s = self.lock();
        if admitted == Admit::Probe {
            s.probing = false;
            if verdict == Verdict::Success {
                s.state = State::Closed;
                s.consecutive = 0;
                s.recent.clear();
            } else {
                s.state = State::Open;
                s.open_until = now + base;
            }
            return s.state;
        }
        if s.state != State::Closed {
            // A request admitted before the breaker opened: its news is already stale.
            return s.state;
        }
        let window = Duration::from_millis(cfg.window_ms);
        let failed = verdict != Verdict::Success;
        s.recent.add(now, failed, window);
        s.consecutive = if failed { s.consecutive + 1 } else { 0 };
        let (total, failures) = (s.recent.total, s.recent.failed);
        let rate_trips = failed
            && total >= cfg.min_requests.max(1)
            && f64::from(failures) / f64::from(total) >= cfg.error_rate;
        if verdict == Verdict::Refused || s.consecutive >= cfg.consecutive_failures || rate_trips {
            s.state = State::Open;
            s.down_since = now;
            s.open_until = now + base;
        }
        s.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            window_ms: 10_000,
            open_ms: 1_000,
        }
    }

    #[test]
    fn opens_on_consecutive_failures_and_probes_after_the_open_time() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t), Admit::Yes);
            assert_eq!(b.record(Admit::Yes, Verdict::Failure, t), State::Closed);
        }
        assert_eq!(b.record(Admit::Yes, Verdict::Failure, t), State::Open);
        assert!(matches!(
            b.admit(t + Duration::from_millis(999)),
            Admit::No(_)
        ));
        let later = t + Duration::from_millis(1000);
        assert_eq!(b.down_for(later), Duration::from_millis(1000));
        assert_eq!(b.admit(later), Admit::Probe);
        assert!(
            matches!(b.admit(later), Admit::No(_)),
            "one probe at a time"
        );
        // The probe fails: open again, for as long.
        assert_eq!(b.record(Admit::Probe, Verdict::Failure, later), State::Open);
        assert!(matches!(
            b.admit(later + Duration::from_millis(999)),
            Admit::No(_)
        ));
        let again = later + Duration::from_millis(1000);
        assert_eq!(b.admit(again), Admit::Probe);
        assert_eq!(
            b.record(Admit::Probe, Verdict::Success, again),
            State::Closed
        );
        assert_eq!(b.admit(again), Admit::Yes);
    }

    #[test]
    fn a_success_resets_the_run_of_failures_and_permanent_errors_are_not_failures() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        for v in [
            Verdict::Failure,
            Verdict::Failure,
            Verdict::of(Err(ErrorClass::Permanent)),
            Verdict::Failure,
            Verdict::Failure,
        ] {
            b.record(Admit::Yes, v, t);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn opens_on_the_error_rate_once_enough_requests_were_made() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        // Alternate: never 3 in a row, but half of 10 failed.
        for i in 0..9 {
            let v = if i % 2 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            assert_eq!(b.record(Admit::Yes, v, t), State::Closed, "request {i}");
        }
        // A success never opens it, even with half of the window failed.
        assert_eq!(b.record(Admit::Yes, Verdict::Success, t), State::Closed);
        assert_eq!(b.record(Admit::Yes, Verdict::Failure, t), State::Open);
    }

    #[test]
    fn old_requests_leave_the_window() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        for i in 0..10 {
            let v = if i % 2 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            b.record(Admit::Yes, v, t);
        }
        // Those 10 (5 failed) are 11 s old now (past the window and its last bucket); a
        // failure among fresh successes does not trip.
        let later = t + Duration::from_millis(10_500);
        for _ in 0..9 {
            b.record(Admit::Yes, Verdict::Success, later);
        }
        assert_eq!(b.record(Admit::Yes, Verdict::Failure, later), State::Closed);
    }

    #[test]
    fn the_window_counts_in_constant_memory_at_any_rate() {
        let mut w = Window::default();
        let t = Instant::now();
        let window = Duration::from_secs(10);
        // 100,000 requests over 20 s, one failure in ten.
        for i in 0..100_000u32 {
            w.add(
                t + Duration::from_micros(u64::from(i) * 200),
                i % 10 == 0,
                window,
            );
        }
        assert!(
            w.buckets.len() <= BUCKETS as usize + 1,
            "{}",
            w.buckets.len()
        );
        // About the last 10 s (10 s to 10.5 s of requests), a tenth of them failed.
        assert!((50_000..=52_600).contains(&w.total), "{}", w.total);
        assert!((f64::from(w.failed) / f64::from(w.total) - 0.1).abs() < 0.001);
    }

    #[test]
    fn a_quota_or_auth_error_opens_at_once_and_an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        assert_eq!(
            b.record(Admit::Yes, Verdict::of(Err(ErrorClass::QuotaAuth)), t),
            State::Open
        );
        let later = t + Duration::from_secs(1);
        let probe = b.admit(later);
        assert_eq!(probe, Admit::Probe);
        b.abandon(probe);
        assert_eq!(b.admit(later), Admit::Probe);
    }

    #[test]
    fn a_request_leaves_the_window_exactly_one_window_and_a_bucket_after_its_bucket_began() {
        let window = Duration::from_secs(10);
        let width = window / BUCKETS;
        let t = Instant::now();
        let mut w = Window::default();
        w.add(t, true, window);
        w.add(t + window + width - Duration::from_micros(1), false, window);
        assert_eq!((w.total, w.failed), (2, 1), "still counted just before");
        let mut w = Window::default();
        w.add(t, true, window);
        w.add(t + window + width, false, window);
        assert_eq!((w.total, w.failed), (1, 0), "gone at the boundary");
    }

    #[test]
    fn requests_share_a_bucket_only_within_its_width() {
        let window = Duration::from_secs(10);
        let width = window / BUCKETS;
        let t = Instant::now();
        let mut w = Window::default();
        w.add(t, false, window);
        w.add(t + width - Duration::from_micros(1), false, window);
        assert_eq!(w.buckets.len(), 1);
        w.add(t + width, false, window);
        assert_eq!(w.buckets.len(), 2);
        assert_eq!(w.total, 3);
    }

    #[test]
    fn a_successful_probe_forgets_the_failures_before_the_outage() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        // Nine requests, six failed, the last three in a row: open.
        use Verdict::{Failure as F, Success as S};
        for v in [F, S, F, S, F, S, F, F, F] {
            b.record(Admit::Yes, v, t);
        }
        assert_eq!(b.state(), State::Open);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.record(Admit::Probe, S, later), State::Closed);
        // Had the window kept those nine, one more failure would make 7 of 10 and trip it.
        assert_eq!(b.record(Admit::Yes, F, later), State::Closed);
    }

    #[test]
    fn a_closed_breaker_has_been_down_for_no_time() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        assert_eq!(b.down_for(t + Duration::from_secs(5)), Duration::ZERO);
        // And again after an outage that ended.
        b.record(Admit::Yes, Verdict::Refused, t);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admit::Probe);
        b.record(Admit::Probe, Verdict::Success, later);
        assert_eq!(b.down_for(later + Duration::from_secs(30)), Duration::ZERO);
    }

    #[test]
    fn the_state_gauge_is_zero_closed_one_half_open_two_open() {
        assert_eq!(
            [State::Closed, State::HalfOpen, State::Open].map(State::gauge),
            [0, 1, 2]
        );
    }
}
