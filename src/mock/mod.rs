//! The mock provider (`mailfleet mock-provider`): a real server speaking the four HTTP
//! dialects at their real paths (SendGrid v3 `POST /v3/mail/send`, SES v2
//! `POST /v2/email/outbound-emails`, Mailgun `POST /v3/<domain>/messages`, Postmark
//! `POST /email`, see [`dialects`]) and, when asked, SMTP ([`smtp`]).
//!
//! Every accepted job id (from the vendor's metadata field) is appended to a JSONL log and
//! counted, so a run can be checked for lost and duplicated emails from the provider's side.
//! `GET /stats` reports the counts, per dialect too.
//!
//! Faults and limits, each from the configuration:
//! - latency: fixed, uniform jitter, or log-normal with a given median and p99;
//! - a failure rate (vendor-shaped 503s), an outage window (503s from `outage_after` for
//!   `outage_for`), bursts of 429;
//! - a rate limit per dialect: a sliding window over every request that arrived; a request
//!   that would make the window hold more than the limit is answered 429 with the vendor's
//!   headers. `max_window_count` is the most requests that arrived in any window (rejected
//!   ones included), so a client that never exceeds the limit keeps it at or under the limit;
//! - accept-then-drop: the request is read, accepted and logged, then the connection is reset
//!   without an answer (the ambiguous case: the email may go out, the client cannot know);
//! - accept-then-5xx: the request is accepted and logged, then answered 500, 502 or 504, as a
//!   gateway does when the vendor behind it queued the email and the reply was lost.
//!
//! The log is written by one task through a buffer flushed every 50 ms and on shutdown, so a
//! stopped mock's log is complete.

pub mod dialects;
mod log;
mod serve;
pub mod sigv4;
pub mod smtp;

pub use log::read_log;
use log::write_log;
pub use serve::{Edge, serve};

use axum::Router;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A provider's window: at most `limit` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Added to every request (the median, with `latency_p99`).
    pub latency: Duration,
    /// Extra uniformly random latency, 0..jitter.
    pub jitter: Duration,
    /// When set, latency is log-normal with median `latency` and this p99.
    pub latency_p99: Option<Duration>,
    /// Share of requests answered 503 (0.0 to 1.0); those are not counted as received.
    pub failure_rate: f64,
    /// Share of requests accepted, logged, and then answered with a connection reset.
    pub drop_rate: f64,
    /// Share of requests accepted, logged, and then answered 500, 502 or 504 (in turn).
    pub accepted_error_rate: f64,
    /// Where accepted job ids are appended, one JSON object per line.
    pub log: Option<PathBuf>,
    /// Bursts of 429: every `throttle_every`, answer 429 (Retry-After: 1) for `throttle_for`.
    pub throttle_every: Duration,
    pub throttle_for: Duration,
    /// An outage: every request answered 503 from `outage_after` (since start) for `outage_for`.
    pub outage_after: Duration,
    pub outage_for: Duration,
    /// The window each dialect enforces (None: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// When set, SES requests must carry a valid SigV4 signature made with this secret.
    pub ses_secret: Option<String>,
    /// Keep the last this many requests (headers and body) for tests to inspect.
    pub capture: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            latency_p99: None,
            failure_rate: 0.0,
            drop_rate: 0.0,
            accepted_error_rate: 0.0,
            log: None,
            throttle_every: Duration::ZERO,
            throttle_for: Duration::ZERO,
            outage_after: Duration::ZERO,
            outage_for: Duration::ZERO,
            rate_limit: None,
            ses_secret: None,
            capture: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub failed_injected: u64,
    pub throttled: u64,
    /// Requests answered 429 because they exceeded the configured window.
    #[serde(default)]
    pub rate_limited: u64,
    /// The most requests that arrived (accepted or not) in any one window, per dialect's max.
    #[serde(default)]
    pub max_window_count: u64,
    /// Accepted, then answered with a reset.
    #[serde(default)]
    pub dropped: u64,
    /// Accepted, then answered 500, 502 or 504.
    #[serde(default)]
    pub accepted_errors: u64,
    /// Accepted per dialect.
    #[serde(default)]
    pub by_dialect: BTreeMap<String, u64>,
    /// Unix ms of the first and last accepted request (0 before any).
    #[serde(default)]
    pub first_at_ms: i64,
    #[serde(default)]
    pub last_at_ms: i64,
}

/// One request as it arrived, for tests.
#[derive(Debug, Clone)]
pub struct Captured {
    pub dialect: &'static str,
    pub path: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Window {
    /// Arrival instants, oldest first.
    arrivals: VecDeque<Instant>,
    max: u64,
}

impl Window {
    /// Count a request that arrived `at` (stamped when its headers were read, so two requests
    /// can reach the count out of order). Returns the retry-after when the window ending at its
    /// arrival holds more than the limit. `max` covers every window the arrival falls in,
    /// including those ending at later arrivals already counted.
    fn arrive(&mut self, at: Instant, n: usize, rl: RateLimit) -> Option<Duration> {
        // Keep a second beyond the window for arrivals counted out of order.
        let keep = rl.window + Duration::from_secs(1);
        let newest = self.arrivals.back().copied().map_or(at, |b| b.max(at));
        while self
            .arrivals
            .front()
            .is_some_and(|&t| newest.duration_since(t) > keep)
        {
            self.arrivals.pop_front();
        }
        // A batch request's emails all arrive with it.
        let n = n.max(1);
        let pos = self.arrivals.partition_point(|&t| t <= at);
        for _ in 0..n {
            self.arrivals.insert(pos, at);
        }
        let last = pos + n - 1;
        // Requests in the window ending at `end` (inclusive): those in (end - window, end].
        let in_window = |arrivals: &VecDeque<Instant>, end_idx: usize| -> u64 {
            let end = arrivals[end_idx];
            let first = arrivals.partition_point(|&t| end.duration_since(t) >= rl.window);
            (end_idx + 1 - first.min(end_idx + 1)) as u64
        };
        let own = in_window(&self.arrivals, last);
        let mut most = own;
        for later in last + 1..self.arrivals.len() {
            if self.arrivals[later].duration_since(at) >= rl.window {
                break;
            }
            most = most.max(in_window(&self.arrivals, later));
        }
        self.max = self.max.max(most);
        (own > u64::from(rl.limit)).then(|| {
            let first = self
                .arrivals
                .partition_point(|&t| at.duration_since(t) >= rl.window);
            let oldest = self.arrivals.get(first).copied().unwrap_or(at);
            rl.window.saturating_sub(at.duration_since(oldest))
        })
    }
}

struct Inner {
    cfg: MockConfig,
    seen: Mutex<HashMap<String, u32>>,
    received: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    accepted_errors: AtomicU64,
    windows: Mutex<HashMap<&'static str, Window>>,
    by_dialect: Mutex<BTreeMap<String, u64>>,
    first_last: Mutex<(i64, i64)>,
    captured: Mutex<VecDeque<Captured>>,
    started: Instant,
    log: Option<mpsc::UnboundedSender<String>>,
}

#[derive(Clone)]
pub struct Mock(Arc<Inner>);

/// A running mock: its router and the log writer to await after the server stops.
pub struct MockServer {
    pub router: Router,
    pub state: Mock,
    pub log_writer: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// What the fault settings decide for one arriving request.
pub enum Verdict {
    /// Over the window: answer 429, retry after this long.
    RateLimited(Duration),
    /// A 429 burst.
    Throttled,
    /// Answer 503.
    Unavailable,
    /// Take it.
    Accept,
}

/// How an accepted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The vendor's success answer.
    Success,
    /// No answer: the connection is reset.
    Reset,
    /// A server error with this status, though the email was taken.
    ServerError(u16),
}

impl Mock {
    pub fn stats(&self) -> Stats {
        let seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        let received = self.0.received.load(Ordering::SeqCst);
        let windows = self.0.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (first, last) = *self.0.first_last.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            received,
            unique: seen.len() as u64,
            duplicates: received.saturating_sub(seen.len() as u64),
            failed_injected: self.0.failed.load(Ordering::SeqCst),
            throttled: self.0.throttled.load(Ordering::SeqCst),
            rate_limited: self.0.rate_limited.load(Ordering::SeqCst),
            max_window_count: windows.values().map(|w| w.max).max().unwrap_or(0),
            dropped: self.0.dropped.load(Ordering::SeqCst),
            accepted_errors: self.0.accepted_errors.load(Ordering::SeqCst),
            by_dialect: self
                .0
                .by_dialect
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            first_at_ms: first,
            last_at_ms: last,
        }
    }

    /// How many times each job id was accepted.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.0
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The captured requests, oldest first (with `capture` > 0).
    pub fn captured(&self) -> Vec<Captured> {
        self.0
            .captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn config(&self) -> &MockConfig {
        &self.0.cfg
    }

    pub(crate) fn capture(
        &self,
        dialect: &'static str,
        path: &str,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) {
        let cap = self.0.cfg.capture;
        if cap == 0 {
            return;
        }
        let mut c = self.0.captured.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= cap {
            c.pop_front();
        }
        c.push_back(Captured {
            dialect,
            path: path.to_owned(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
    }

    /// Count an arriving request in its dialect's window, wait out the configured latency,
    /// and decide its fate.
    /// `n` is how many emails the request carries (a batch counts each).
    pub(crate) async fn arrive(
        &self,
        dialect: &'static str,
        at: Option<Instant>,
        n: usize,
    ) -> Verdict {
        let cfg = &self.0.cfg;
        if let Some(rl) = cfg.rate_limit {
            let mut windows = self.0.windows.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(dialect).or_default();
            if let Some(retry) = w.arrive(at.unwrap_or_else(Instant::now), n, rl) {
                self.0.rate_limited.fetch_add(1, Ordering::SeqCst);
                return Verdict::RateLimited(retry);
            }
        }
        let delay = self.latency();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let elapsed = self.0.started.elapsed();
        if !cfg.outage_for.is_zero()
            && elapsed >= cfg.outage_after
            && elapsed < cfg.outage_after + cfg.outage_for
        {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            return Verdict::Unavailable;
        }
        if !cfg.throttle_every.is_zero() {
            let every = cfg.throttle_every.as_millis().max(1);
            if elapsed.as_millis() % every < cfg.throttle_for.as_millis() {
                self.0.throttled.fetch_add(1, Ordering::SeqCst);
                return Verdict::Throttled;
            }
        }
        if cfg.failure_rate > 0.0 && rand::random::<f64>() < cfg.failure_rate {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            return Verdict::Unavailable;
        }
        Verdict::Accept
    }

    fn latency(&self) -> Duration {
        let cfg = &self.0.cfg;
        let mut delay = match cfg.latency_p99 {
            Some(p99) if !cfg.latency.is_zero() && p99 > cfg.latency => {
                // Log-normal: median m, p99 = m * exp(2.326 sigma).
                let m = cfg.latency.as_secs_f64();
                let sigma = (p99.as_secs_f64() / m).ln() / 2.326;
                let (u1, u2): (f64, f64) = (rand::random::<f64>().max(1e-12), rand::random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                Duration::from_secs_f64((m * (sigma * z).exp()).min(60.0))
            }
            _ => cfg.latency,
        };
        if !cfg.jitter.is_zero() {
            delay += Duration::from_micros(rand::random_range(0..cfg.jitter.as_micros() as u64));
        }
        delay
    }

    /// Record an accepted job; returns the provider message id to answer with, and how to
    /// answer (success, a reset for accept-then-drop, a 5xx for accept-then-5xx).
    pub(crate) fn accept(&self, dialect: &'static str, job_id: &str) -> (String, Answer) {
        self.accept_all(dialect, &[job_id])
    }

    /// Record the jobs of one accepted request (a batch carries several): one message id and
    /// one answer for the request.
    pub(crate) fn accept_all(&self, dialect: &'static str, job_ids: &[&str]) -> (String, Answer) {
        let message_id = uuid::Uuid::now_v7().simple().to_string();
        {
            let mut seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
            for id in job_ids {
                *seen.entry((*id).to_owned()).or_insert(0) += 1;
            }
        }
        let n = job_ids.len() as u64;
        self.0.received.fetch_add(n, Ordering::SeqCst);
        *self
            .0
            .by_dialect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dialect.to_owned())
            .or_insert(0) += n;
        let at_ms = chrono::Utc::now().timestamp_millis();
        {
            let mut fl = self.0.first_last.lock().unwrap_or_else(|p| p.into_inner());
            if fl.0 == 0 {
                fl.0 = at_ms;
            }
            fl.1 = at_ms;
        }
        let cfg = &self.0.cfg;
        let answer = if cfg.drop_rate > 0.0 && rand::random::<f64>() < cfg.drop_rate {
            self.0.dropped.fetch_add(n, Ordering::SeqCst);
            Answer::Reset
        } else if cfg.accepted_error_rate > 0.0 && rand::random::<f64>() < cfg.accepted_error_rate {
            let k = self.0.accepted_errors.fetch_add(n, Ordering::SeqCst);
            Answer::ServerError([500, 502, 504][(k % 3) as usize])
        } else {
            Answer::Success
        };
        let drop = answer == Answer::Reset;
        if let Some(log) = &self.0.log {
            for id in job_ids {
                let line = json!({
                    "id": id,
                    "provider": dialect,
                    "message_id": message_id,
                    "at_ms": at_ms,
                    "dropped": drop,
                });
                let _ = log.send(line.to_string());
            }
        }
        (message_id, answer)
    }
}

/// Build the mock. With a log path, the file is created (truncated) now. The log writer ends
/// when every clone of the returned state is dropped.
pub async fn build(cfg: MockConfig) -> std::io::Result<MockServer> {
    let (log, log_writer) = match &cfg.log {
        Some(path) => {
            let file = tokio::fs::File::create(path).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(tokio::spawn(write_log(file, rx))))
        }
        None => (None, None),
    };
    let state = Mock(Arc::new(Inner {
        cfg,
        seen: Mutex::new(HashMap::new()),
        received: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        accepted_errors: AtomicU64::new(0),
        windows: Mutex::new(HashMap::new()),
        by_dialect: Mutex::new(BTreeMap::new()),
        first_last: Mutex::new((0, 0)),
        captured: Mutex::new(VecDeque::new()),
        started: Instant::now(),
        log,
    }));
    let router = dialects::routes()
        .route(
            "/stats",
            get(
                |axum::extract::State(m): axum::extract::State<Mock>| async move {
                    axum::Json(m.stats())
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state.clone());
    Ok(MockServer {
        router,
        state,
        log_writer,
    })
}

#[cfg(test)]
mod tests {
    use super::{RateLimit, Window};
    use std::time::{Duration, Instant};

    const RL: RateLimit = RateLimit {
        limit: 3,
        window: Duration::from_millis(1000),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_request_past_the_limit_in_its_window_is_refused_with_the_wait_for_the_oldest() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for n in [0, 100, 200] {
            assert_eq!(w.arrive(t0 + ms(n), 1, RL), None);
        }
        assert_eq!(w.arrive(t0 + ms(300), 1, RL), Some(ms(700)));
        // The first arrival leaves the window at t0 + 1 s; the refused one still counts.
        assert_eq!(w.arrive(t0 + ms(1000), 1, RL), Some(ms(100)));
        assert_eq!(w.max, 4);
        assert_eq!(w.arrive(t0 + ms(1301), 1, RL), None);
    }

    #[test]
    fn an_arrival_counted_late_joins_every_window_it_falls_in() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for n in [0, 900, 1500] {
            assert_eq!(w.arrive(t0 + ms(n), 1, RL), None);
        }
        assert_eq!(w.max, 2);
        // Arrived at 950 ms but counted after the one of 1,500 ms: the window ending at 950
        // holds 0, 900, 950, and the one ending at 1,500 holds 900, 950, 1500.
        assert_eq!(w.arrive(t0 + ms(950), 1, RL), None);
        assert_eq!(w.max, 3);
        // Refused: 0, 900, 950 and itself; room again once the one of 0 ms is a window old.
        assert_eq!(w.arrive(t0 + ms(960), 1, RL), Some(ms(40)));
        assert_eq!(w.max, 4);
    }
}
