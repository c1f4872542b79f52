//! The observer: queue depths as gauges, and this worker reported alive with its breakers'
//! states, in one pipelined read every few seconds.

use super::Shared;
use crate::metrics::METRICS;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a worker publishes queue depths and reports itself alive.
const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// Every [`OBSERVE_EVERY`]: one pipelined read of every queue's depth, which also reports this
/// worker alive with its breakers' states; the results become gauges.
pub(super) async fn run(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let states = shared.deps.providers.breaker_states();
        let read = match shared.deps.redis.get().await {
            Ok(mut conn) => crate::stream::depth::read(
                &mut *conn,
                &shared.deps.keys,
                Some((&shared.settings.consumer, &states)),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(d) => {
                for (lane, l) in &d.lanes {
                    METRICS
                        .queue_length
                        .with_label_values(&[lane])
                        .set(l.length as i64);
                    METRICS
                        .queue_pending
                        .with_label_values(&[lane])
                        .set(l.pending as i64);
                    METRICS
                        .queue_lag
                        .with_label_values(&[lane])
                        .set(l.lag as i64);
                    METRICS
                        .oldest_pending
                        .with_label_values(&[lane])
                        .set(l.oldest_pending_ms as f64 / 1000.0);
                }
                METRICS.delayed.set(d.delayed as i64);
                METRICS.dead_letter_length.set(d.dead as i64);
                METRICS.workers_alive.set(d.workers.len() as i64);
                METRICS.tenants_active.set(d.tenants.active as i64);
                METRICS.fair_spread.set(d.tenants.spread);
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["observe"]).inc();
                tracing::warn!(error.message = %e, "observer: reading queue depths failed");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(OBSERVE_EVERY) => {}
        }
    }
}
