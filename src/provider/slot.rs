//! One configured provider and what guards it in this worker: its breaker, smoothing,
//! concurrency cap, cluster limit, the tx lane's own adapter and bulk's batcher.

use super::{ErrorClass, Provider, batch, breaker};
use crate::config::{BreakerConfig, Limit};
use crate::domain::Lane;
use crate::metrics::METRICS;
use breaker::Breaker;
use std::sync::Arc;

/// A per-worker smoothing limiter (governor): spreads this worker's requests to one provider
/// evenly instead of in bursts. The cluster-wide limit is a separate, shared window.
pub type Smoother = governor::DefaultDirectRateLimiter;

/// Build a smoother for `per_sec` requests per second (burst of one second's worth).
pub fn smoother(per_sec: u32) -> Option<Smoother> {
    let n = std::num::NonZeroU32::new(per_sec)?;
    Some(governor::RateLimiter::direct(governor::Quota::per_second(
        n,
    )))
}

/// One configured provider and what guards it in this worker.
pub struct Slot {
    pub provider: Arc<dyn Provider>,
    /// The same adapter over tx's own HTTP client, whose connections the tx runtime drives
    /// (`worker::TxRuntime`): a tx request's answer is never read by a runtime busy with bulk.
    /// None for SMTP, whose pooled connections serve both lanes.
    pub(super) tx: Option<Arc<dyn Provider>>,
    pub breaker: Breaker,
    /// The cluster-wide window, when mailfleet limits this provider.
    pub limit: Option<Limit>,
    pub(super) smoother: Option<Smoother>,
    /// Whose turn it is at the smoother: tx before bulk (the smoother itself is unordered).
    smooth_turn: crate::priority::PrioritySemaphore,
    /// The provider's concurrency cap in this worker, handed out tx first.
    pub(super) concurrency: Option<crate::priority::PrioritySemaphore>,
    /// Bulk sends coalesced into the vendor's batch requests (None: one request per email).
    pub(super) batcher: Option<Arc<batch::Batcher>>,
}

impl Slot {
    pub(super) fn new(provider: Arc<dyn Provider>, breaker: BreakerConfig) -> Self {
        Slot {
            provider,
            tx: None,
            breaker: Breaker::new(breaker),
            limit: None,
            smoother: None,
            smooth_turn: crate::priority::PrioritySemaphore::new(1),
            concurrency: None,
            batcher: None,
        }
    }

    /// The batcher a `lane` send may go through: bulk only (tx is one request per email,
    /// latency first).
    pub fn batcher(&self, lane: Lane) -> Option<&Arc<batch::Batcher>> {
        match lane {
            Lane::Bulk => self.batcher.as_ref(),
            Lane::Tx => None,
        }
    }

    pub fn name(&self) -> &str {
        self.provider.name()
    }

    /// The adapter a `lane` job is sent through.
    pub fn adapter(&self, lane: Lane) -> &Arc<dyn Provider> {
        match (lane, &self.tx) {
            (Lane::Tx, Some(tx)) => tx,
            _ => &self.provider,
        }
    }

    /// Wait for this worker's smoothing and concurrency cap; hold the permit while sending.
    pub async fn ready(&self, lane: Lane, tenant: Option<&str>) -> Option<crate::priority::Permit> {
        if let Some(s) = &self.smoother {
            let _turn = self.smooth_turn.acquire_for(lane, tenant).await;
            s.until_ready().await;
        }
        match &self.concurrency {
            Some(sem) => Some(sem.acquire_for(lane, tenant).await),
            None => None,
        }
    }

    /// Feed a finished request to the breaker and publish its state.
    pub fn record(&self, admitted: breaker::Admit, result: Result<(), ErrorClass>) {
        let state = self.breaker.record(
            admitted,
            breaker::Verdict::of(result),
            std::time::Instant::now(),
        );
        METRICS
            .breaker_state
            .with_label_values(&[self.name()])
            .set(state.gauge());
    }
}
