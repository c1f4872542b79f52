//! The observer: queue depths as gauges, and this worker reported alive with its breakers'
//! states, in one pipelined read every few seconds; Redis's memory as a gauge, and above 80%
//! of maxmemory a trim of acked entries.

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
    let started_ms = chrono::Utc::now().timestamp_millis();
    loop {
        let states = shared.deps.providers.breaker_states();
        let me = crate::stream::depth::Me {
            consumer: &shared.settings.consumer,
            breakers: &states,
            info: crate::stream::depth::WorkerInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_ms,
                in_flight: METRICS.in_flight.get(),
            },
        };
        let read = match shared.deps.redis.get().await {
            Ok(mut conn) => crate::stream::depth::read(&mut *conn, &shared.deps.keys, Some(me))
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
        if let Some(r) = memory_ratio(&shared).await {
            METRICS.redis_memory_ratio.set(r);
            if r >= PRESSED {
                trim(&shared).await;
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(OBSERVE_EVERY) => {}
        }
    }
}

/// From this share of maxmemory on, every worker trims acked entries at each observation. The
/// leader's regular trim may not come: at maxmemory Redis refuses the lease's writes too.
/// Trimming is idempotent and atomic (`lua/trim.lua`), and XTRIM frees memory, so Redis runs
/// it when full; several workers trimming at once is only redundant.
const PRESSED: f64 = 0.8;

async fn trim(shared: &Shared) {
    let trimmed = crate::stream::consumer::trim_counted(
        &shared.deps.redis,
        &shared.deps.keys,
        "memory pressure",
    )
    .await;
    if let Some(n) = trimmed {
        tracing::info!(
            removed = n,
            "Redis is near its maxmemory: trimmed acked entries"
        );
    }
}

/// Redis's used_memory / maxmemory from `INFO memory` (0 without a maxmemory). `None` when
/// Redis did not answer in that form (a cluster answers per node): the gauge keeps its value.
async fn memory_ratio(shared: &Shared) -> Option<f64> {
    let mut conn = shared.deps.redis.get().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut *conn)
        .await
        .ok()?;
    parse_memory_ratio(&info)
}

fn parse_memory_ratio(info: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let used = field("used_memory")?;
    let max = field("maxmemory")?;
    Some(if max > 0.0 { used / max } else { 0.0 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_ratio_is_used_over_max_and_zero_without_a_max() {
        let info = "# Memory\r\nused_memory:500\r\nused_memory_human:500B\r\nmaxmemory:1000\r\n";
        assert_eq!(super::parse_memory_ratio(info), Some(0.5));
        assert_eq!(
            super::parse_memory_ratio("used_memory:5\r\nmaxmemory:0\r\n"),
            Some(0.0)
        );
        assert_eq!(super::parse_memory_ratio("nothing"), None);
    }
}
