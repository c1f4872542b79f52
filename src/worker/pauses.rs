//! The pause watcher: every worker reads the operator's pauses (lane, provider, tenant) twice
//! a second, so `mailfleet pause` is honoured cluster-wide within a second.

use super::Shared;
use crate::metrics::METRICS;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a worker reads the pauses: a pause is honoured within a second.
const PAUSE_POLL: Duration = Duration::from_millis(500);

/// Every [`PAUSE_POLL`]: read the pauses (one HGETALL) into [`Shared::pauses`] and the
/// `mailfleet_paused` gauge. On a Redis error the last known pauses stay in force.
pub(super) async fn run(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let read = match shared.deps.redis.get().await {
            Ok(mut conn) => crate::stream::pause::read(&mut *conn, &shared.deps.keys)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(p) => {
                let changed = *shared.pauses() != p;
                if changed {
                    METRICS.paused.reset();
                    for (scope, name, _) in &p.all {
                        METRICS.paused.with_label_values(&[scope, name]).set(1);
                    }
                    tracing::info!(pauses = p.all.len(), "pauses changed");
                    *shared.pauses.write().unwrap_or_else(|e| e.into_inner()) = p;
                }
            }
            Err(e) => {
                METRICS.redis_errors.with_label_values(&["pauses"]).inc();
                tracing::warn!(error.message = %e, "reading pauses failed; keeping the last ones");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(PAUSE_POLL) => {}
        }
    }
}
