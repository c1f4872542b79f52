//! One lane's read loop on one partition: wait for room in the lane's in-flight pool, read a
//! batch, hand it to a batch task. Each lane has its own loop, pool and blocking connection,
//! so a tx entry is read as soon as it arrives however much bulk is admitted. Redis errors
//! back off and retry; nothing here ever acks.

use super::recorder::Outbox;
use super::{Shared, process};
use crate::domain::Lane;
use crate::metrics::METRICS;
use crate::stream::consumer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) async fn run(
    shared: Arc<Shared>,
    partition: u16,
    lane: Lane,
    out: Outbox,
    batches: TaskTracker,
    token: CancellationToken,
) {
    let s = &shared.settings;
    let mut blocking = None;
    // Kept across reads: every checkout from the pool costs a recycle round trip (UNWATCH,
    // PING), which at small batches was 0.4 commands per email.
    let mut pooled = None;
    let mut failures: u32 = 0;
    let mut linger = Linger::new(
        Duration::from_millis(s.read_linger_ms),
        (s.batch_size / 4).max(2),
    );
    loop {
        let pause = linger.wait(Instant::now());
        if !pause.is_zero() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Room first: never read what we could not hold.
        let room = tokio::select! {
            _ = token.cancelled() => return,
            room = shared.room(lane).take_read(s.batch_size) => match room {
                Some(n) => n,
                None => return,
            },
        };
        if token.is_cancelled() {
            shared.room(lane).unused(room);
            return;
        }
        let read = read_once(&shared, partition, lane, room, &mut pooled, &mut blocking).await;
        let entries = match read {
            Ok(e) => {
                failures = 0;
                linger.observed(e.len(), room, Instant::now());
                if lane == Lane::Tx {
                    shared.room(Lane::Bulk).tx_read(e.len(), room);
                }
                e
            }
            Err(e) => {
                shared.room(lane).unused(room);
                METRICS.redis_errors.with_label_values(&["read"]).inc();
                blocking = None;
                pooled = None;
                failures = failures.saturating_add(1);
                // Redis came back without its data (no persistence, a new disk): the groups
                // are gone with the streams. Create them again, from the start of the new streams.
                if e.contains("NOGROUP") {
                    recreate_groups(&shared).await;
                }
                let wait = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
                tracing::warn!(partition, lane = %lane, error.message = %e, retry_in_ms = wait.as_millis() as u64, "read failed; backing off");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        debug_assert!(
            entries.len() <= room,
            "read more entries than permits taken"
        );
        shared.room(lane).unused(room.saturating_sub(entries.len()));
        if entries.is_empty() {
            continue;
        }
        observe_admission(lane, &entries);
        let shared = shared.clone();
        let out = out.clone();
        batches.spawn(async move { process::batch(shared, entries, out).await });
    }
}

/// Adaptive batching for a read loop. Every read costs a Redis round trip, and the batch it
/// starts a claim and a record transaction in Postgres, whatever its size: at 5,000 emails/s
/// reads of one or two entries made Postgres the bottleneck (0.57 transactions per email).
/// So under load a read first waits, up to `max`, for about `target` entries to arrive, at
/// the arrival rate observed; light traffic (fewer than two entries expected within `max`)
/// and a backlog (the last read came back full) are read at once.
#[derive(Debug)]
pub(super) struct Linger {
    max: Duration,
    target: usize,
    /// Entries per second, smoothed over reads.
    rate: f64,
    last: Option<Instant>,
    full: bool,
}

impl Linger {
    pub(super) fn new(max: Duration, target: usize) -> Self {
        Linger {
            max,
            target,
            rate: 0.0,
            last: None,
            full: false,
        }
    }

    /// A read at `now` returned `n` entries of at most `cap`.
    pub(super) fn observed(&mut self, n: usize, cap: usize, now: Instant) {
        if let Some(prev) = self.last {
            let dt = now.saturating_duration_since(prev).as_secs_f64().max(1e-4);
            let inst = n as f64 / dt;
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                0.7 * self.rate + 0.3 * inst
            };
        }
        self.last = Some(now);
        self.full = n >= cap;
    }

    /// How long to wait before the next read.
    pub(super) fn wait(&self, now: Instant) -> Duration {
        let Some(last) = self.last else {
            return Duration::ZERO;
        };
        if self.max.is_zero() || self.full || self.rate * self.max.as_secs_f64() < 2.0 {
            return Duration::ZERO;
        }
        let fill = Duration::from_secs_f64(self.target as f64 / self.rate);
        fill.min(self.max)
            .saturating_sub(now.saturating_duration_since(last))
    }
}

/// Admission wait: how long each entry stood in its stream before it was read, by the entry
/// ID's timestamp (Redis's clock when it was added or moved back to the lane) against ours.
fn observe_admission(lane: Lane, entries: &[crate::stream::RawEntry]) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let h = METRICS
        .stage_wait
        .with_label_values(&["admission", lane.as_str()]);
    for e in entries {
        if let Some(ms) = crate::stream::wire::entry_ms(&e.entry_id) {
            h.observe((now_ms - ms).max(0) as f64 / 1000.0);
        }
    }
}

async fn read_once(
    shared: &Shared,
    partition: u16,
    lane: Lane,
    count: usize,
    pooled: &mut Option<crate::stream::conn::Connection>,
    blocking: &mut Option<crate::stream::Blocking>,
) -> Result<Vec<crate::stream::RawEntry>, String> {
    let s = &shared.settings;
    let d = &shared.deps;
    // The other lane has its own reader: to this one it is as good as paused.
    let mut closed = shared.paused_lanes();
    closed.extend(Lane::ALL.into_iter().filter(|&l| l != lane));
    let now = {
        if pooled.is_none() {
            *pooled = Some(shared.redis(lane).get().await.map_err(|e| e.to_string())?);
        }
        let conn = pooled.as_mut().ok_or("no pooled connection")?;
        consumer::read_now(&mut **conn, &d.keys, partition, &s.consumer, count, &closed)
            .await
            .map_err(|e| e.to_string())?
    };
    if !now.is_empty() {
        return Ok(now);
    }
    if blocking.is_none() {
        *blocking = Some(
            crate::stream::blocking_connection(
                &d.redis_url,
                Duration::from_secs(5),
                Duration::from_millis(s.block_ms),
            )
            .await
            .map_err(|e| e.to_string())?,
        );
    }
    let conn = blocking.as_mut().ok_or("no blocking connection")?;
    // Bounded by BLOCK; a dead server is caught by the outer timeout.
    let block = Duration::from_millis(s.block_ms);
    match tokio::time::timeout(
        block + Duration::from_secs(5),
        consumer::read_blocking(
            conn,
            &d.keys,
            partition,
            &s.consumer,
            count,
            s.block_ms,
            &closed,
        ),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("blocking read did not return in time".into()),
    }
}

async fn recreate_groups(shared: &Shared) {
    let d = &shared.deps;
    let result = match d.redis.get().await {
        Ok(mut conn) => consumer::ensure_groups(&mut *conn, &d.keys)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::warn!("consumer groups were missing (Redis lost its data); created them again")
        }
        Err(e) => tracing::warn!(error.message = %e, "re-creating consumer groups failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingers_only_under_load_and_never_on_a_backlog() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Linger::new(ms(5), 64);
        assert_eq!(l.wait(t), Duration::ZERO, "nothing observed yet");
        // Light traffic: one entry every 100 ms (10/s): read at once.
        for i in 1..=5 {
            l.observed(1, 256, t + ms(100 * i));
        }
        assert_eq!(l.wait(t + ms(500)), Duration::ZERO);
        // 2,500/s arriving as reads of 2 or 3 every millisecond: wait, at most 5 ms.
        let mut l = Linger::new(ms(5), 64);
        for i in 1..=20 {
            l.observed(2 + (i % 2) as usize, 256, t + ms(i));
        }
        let w = l.wait(t + ms(20));
        assert!(w > ms(4) && w <= ms(5), "{w:?}");
        // Part of the wait has passed already.
        assert!(l.wait(t + ms(23)) <= ms(2));
        // A full read means a backlog: no wait.
        l.observed(256, 256, t + ms(25));
        assert_eq!(l.wait(t + ms(25)), Duration::ZERO);
        // Turned off.
        let mut off = Linger::new(Duration::ZERO, 64);
        off.observed(3, 256, t);
        off.observed(3, 256, t + ms(1));
        assert_eq!(off.wait(t + ms(1)), Duration::ZERO);
    }
}
