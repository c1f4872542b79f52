//! The promoter: every worker moves due entries of the delayed set (retries, future sends)
//! back to their lanes through `lua/promote.lua`, atomically, so any worker may run it.

use super::Shared;
use crate::metrics::METRICS;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::stream::consumer;

/// Most entries one call moves per partition.
const PER_CALL: usize = 500;

/// Every `promote_interval_ms`: one `promote.lua` call per partition, pipelined; at once again
/// while calls come back full (a campaign's entries falling due by the thousand).
pub(super) async fn run(shared: Arc<Shared>, token: CancellationToken) {
    let every = Duration::from_millis(shared.settings.promote_interval_ms.max(10));
    let mut full = false;
    loop {
        if full {
            if token.is_cancelled() {
                return;
            }
        } else {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
        full = false;
        let moved = match shared.deps.redis.get().await {
            Ok(mut conn) => consumer::promote_due(&mut *conn, &shared.deps.keys, PER_CALL).await,
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["promote"]).inc();
                tracing::warn!(error.message = %e, "promoter: no Redis connection");
                continue;
            }
        };
        match moved {
            Ok(n) => {
                METRICS.promoted.inc_by(n);
                full = n >= PER_CALL as u64;
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["promote"]).inc();
                tracing::warn!(error.message = %e, "promoter: promote failed");
            }
        }
    }
}
