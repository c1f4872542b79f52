//! Keep trying: the one back-off loop behind every hot-path call a worker must not give up on
//! lightly (the claim, the suppression and template look-ups, the record, the acks). Each
//! failure is counted under its operation and logged once, the wait doubles from `first` to
//! at most [`MAX_WAIT`], and the caller says when to stop trying.

use super::Shared;
use prometheus::IntCounterVec;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The longest wait between two tries.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// When to stop trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Once the worker is draining: the entries stay pending for reclaim.
    WhenDraining,
    /// After this many tries.
    After(u32),
    /// Never: the outcome must land before its acks may go.
    Never,
}

/// What is being tried, for the metric and the log line.
pub struct Op {
    pub errors: &'static IntCounterVec,
    /// The metric's `op` label.
    pub label: &'static str,
    /// The log line's message: what failed and what waits meanwhile.
    pub failed: &'static str,
    pub first: Duration,
    pub give_up: GiveUp,
}

/// Run `attempt` until it succeeds or `op.give_up` says stop (then `None`).
pub async fn until_ok<T, E: Display, F, Fut>(shared: &Shared, op: Op, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = op.first;
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tries += 1;
                op.errors.with_label_values(&[op.label]).inc();
                tracing::warn!(error.message = %e, op = op.label, tries,
                    retry_in_ms = wait.as_millis() as u64, "{}", op.failed);
                let stop = match op.give_up {
                    GiveUp::WhenDraining => shared.draining.load(Ordering::SeqCst),
                    GiveUp::After(n) => tries >= n,
                    GiveUp::Never => false,
                };
                if stop {
                    return None;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
    }
}
