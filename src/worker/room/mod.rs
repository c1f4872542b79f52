//! A lane's in-flight room: how many entries a worker holds read and not yet finished.
//!
//! Tx's room is fixed. Bulk's adapts (`depth::Depth`): a deep bulk pipeline buys throughput only
//! while the time an entry spends in flight stays flat (a slow provider, where more requests
//! in flight mean more sent per second); once the machine, Postgres or the provider is the
//! bottleneck, more bulk in flight only queues, and those queues are on the same cores, the
//! same Postgres and the same provider as every tx email. Measured on two cores: 2,048 bulk
//! entries in flight per worker sent no more than 256 did, and made the tx p99 120 ms
//! instead of 40.

mod depth;

use crate::metrics::METRICS;
use depth::Depth;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long tx counts as live after a tx read came back with entries and not full (a full
/// read is a tx backlog, which bulk's depth does not delay: it waits in its stream). Bulk's
/// depth adapts only while tx is live; otherwise it runs at its ceiling.
const TX_LIVE_FOR: Duration = Duration::from_secs(10);
/// A worker starts as if tx were live, for this long: bulk's first reads stay shallow until
/// the first tx read says tx is there (long enough for a tx read at 1 tx/s), so a tx email
/// in the first second does not wait behind a full bulk pipeline; with no tx, bulk is at its
/// ceiling from then on.
const TX_FIRST_WAIT: Duration = Duration::from_secs(2);

/// Each lane's room (`[tx, bulk]`) for a worker with these settings over `partitions`.
/// Bulk's floor is a batch per partition: each partition's reader may hold a batch's room
/// while its read waits for entries.
pub(crate) fn lanes(s: &super::Settings, partitions: u16) -> [Room; 2] {
    let batch = s.batch_size.max(1);
    let ceiling = s.max_in_flight.max(batch);
    let bulk = if s.adaptive_in_flight {
        let floor = (batch * usize::from(partitions.max(1))).min(ceiling);
        Room::adaptive("bulk", floor, ceiling, batch)
    } else {
        Room::fixed("bulk", ceiling)
    };
    [Room::fixed("tx", s.tx_in_flight.max(batch)), bulk]
}

/// A lane's in-flight pool: a semaphore whose size an adaptive [`Depth`] may change.
pub(crate) struct Room {
    sem: Arc<Semaphore>,
    lane: &'static str,
    /// Whether a [`Depth`] sizes it (fixed for the room's life).
    adaptive: bool,
    state: Mutex<State>,
    /// Until when tx counts as live, in ms since `epoch` (bulk's room only).
    tx_until_ms: AtomicU64,
    epoch: Instant,
}

#[derive(Clone, Copy)]
enum Back {
    Finished,
    Short,
    Unclaimed,
}

struct State {
    depth: Option<Depth>,
    /// Permits the limit shrank by that were out at the time: the next ones back are kept.
    owed: usize,
}

impl Room {
    /// A pool of `size` that never changes.
    pub(crate) fn fixed(lane: &'static str, size: usize) -> Self {
        Self::new(lane, size, None)
    }

    /// A pool that starts at `floor` and moves between it and `ceiling` ([`Depth`]).
    pub(crate) fn adaptive(lane: &'static str, floor: usize, ceiling: usize, step: usize) -> Self {
        let depth = Depth::new(floor, ceiling, step, Instant::now());
        Self::new(lane, depth.limit(), Some(depth))
    }

    fn new(lane: &'static str, size: usize, depth: Option<Depth>) -> Self {
        METRICS
            .in_flight_limit
            .with_label_values(&[lane])
            .set(size as i64);
        Room {
            sem: Arc::new(Semaphore::new(size)),
            lane,
            adaptive: depth.is_some(),
            state: Mutex::new(State { depth, owed: 0 }),
            tx_until_ms: AtomicU64::new(TX_FIRST_WAIT.as_millis() as u64),
            epoch: Instant::now(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for room for `n` entries. `None` once the pool is closed.
    pub(crate) async fn take(&self, n: usize) -> Option<()> {
        self.acquire(n).await?;
        self.took(n);
        Some(())
    }

    /// Room for a read of up to `batch` entries: all of it when the room is fixed; when it
    /// adapts, at least half a batch and as much more as is free, so that near bulk's floor
    /// (a batch per partition) a read overlaps the sends of the one before it instead of
    /// waiting for the whole batch to finish. How many were taken; `None` once closed.
    pub(crate) async fn take_read(&self, batch: usize) -> Option<usize> {
        let batch = batch.max(1);
        let first = if self.adaptive {
            batch.div_ceil(2)
        } else {
            batch
        };
        self.acquire(first).await?;
        let mut n = first;
        let more = self.sem.available_permits().min(batch - first);
        if more > 0
            && let Ok(p) = self.sem.try_acquire_many(more as u32)
        {
            p.forget();
            n += more;
        }
        self.took(n);
        Some(n)
    }

    async fn acquire(&self, n: usize) -> Option<()> {
        let permit = self.sem.acquire_many(n as u32).await.ok()?;
        permit.forget();
        Some(())
    }

    fn took(&self, n: usize) {
        METRICS.in_flight.add(n as i64);
        if let Some(d) = self.state().depth.as_mut() {
            d.taken(n, Instant::now());
        }
    }

    /// A tx read returned `n` entries of at most `cap`: tx is live for [`TX_LIVE_FOR`] unless
    /// the read was full or empty.
    pub(crate) fn tx_read(&self, n: usize, cap: usize) {
        if n > 0 && n < cap {
            let until = self.epoch.elapsed() + TX_LIVE_FOR;
            self.tx_until_ms
                .store(until.as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn tx_live(&self, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.epoch).as_millis() as u64;
        at < self.tx_until_ms.load(Ordering::Relaxed)
    }

    /// Room for `n` entries a stream read took and did not use (it came back short or
    /// failed): the lane's demand is below its room.
    pub(crate) fn unused(&self, n: usize) {
        self.back(n, Back::Short);
    }

    /// Room for `n` entries a reclaim took and did not use: says nothing about demand.
    pub(crate) fn unclaimed(&self, n: usize) {
        self.back(n, Back::Unclaimed);
    }

    /// Room for `n` entries that were finished (acked, retried, dead-lettered, abandoned).
    pub(crate) fn finished(&self, n: usize) {
        self.back(n, Back::Finished);
    }

    fn back(&self, n: usize, why: Back) {
        if n == 0 {
            return;
        }
        METRICS.in_flight.sub(n as i64);
        let mut st = self.state();
        let mut add = n;
        let mut changed = None;
        if let Some(d) = st.depth.as_mut() {
            let now = Instant::now();
            let before = d.limit();
            match why {
                Back::Finished => d.finished(n, now, self.tx_live(now)),
                Back::Short => d.unused(n, now, true),
                Back::Unclaimed => d.unused(n, now, false),
            }
            let after = d.limit();
            if after != before {
                changed = Some(after);
            }
            if after > before {
                add += after - before;
            } else {
                st.owed += before - after;
            }
        }
        let keep = st.owed.min(add);
        st.owed -= keep;
        add -= keep;
        if add > 0 {
            self.sem.add_permits(add);
        }
        // Shrinking: take what is free now, owe the rest.
        if st.owed > 0 {
            let taken = self.sem.forget_permits(st.owed);
            st.owed -= taken;
        }
        drop(st);
        if let Some(limit) = changed {
            tracing::debug!(lane = self.lane, limit, "in-flight room resized");
            METRICS
                .in_flight_limit
                .with_label_values(&[self.lane])
                .set(limit as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_is_live_after_a_short_read_and_not_after_a_full_or_empty_one() {
        let room = Room::adaptive("test", 2, 8, 2);
        let now = Instant::now();
        assert!(room.tx_live(now), "a worker starts as if tx were live");
        let now = now + TX_FIRST_WAIT + Duration::from_secs(1);
        assert!(!room.tx_live(now));
        room.tx_read(256, 256);
        room.tx_read(0, 256);
        assert!(!room.tx_live(now), "a backlog or nothing is not live tx");
        room.tx_read(3, 256);
        assert!(room.tx_live(Instant::now()));
        assert!(!room.tx_live(Instant::now() + TX_LIVE_FOR * 2 + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn an_adaptive_room_reads_half_a_batch_once_half_is_free() {
        let room = Room::adaptive("test", 8, 32, 8);
        room.tx_until_ms.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(
            room.take_read(8).await,
            Some(8),
            "all of it when it is free"
        );
        room.finished(5);
        assert_eq!(
            room.take_read(8).await,
            Some(5),
            "half a batch and what else is free"
        );
        room.finished(3);
        let short = tokio::time::timeout(Duration::from_millis(50), room.take_read(8)).await;
        assert!(short.is_err(), "3 free is less than half a batch: it waits");
        room.finished(1);
        assert_eq!(room.take_read(8).await, Some(4));
    }

    #[tokio::test]
    async fn a_fixed_room_reads_only_a_whole_batch() {
        let room = Room::fixed("test", 8);
        assert_eq!(room.take_read(8).await, Some(8));
        room.finished(5);
        let short = tokio::time::timeout(Duration::from_millis(50), room.take_read(8)).await;
        assert!(short.is_err(), "waits for a whole batch's room");
        room.finished(3);
        assert_eq!(room.take_read(8).await, Some(8));
    }

    #[tokio::test]
    async fn a_shrinking_room_owes_the_permits_that_were_out() {
        let room = Room::fixed("test", 4);
        assert!(room.take(4).await.is_some());
        room.finished(2);
        assert_eq!(room.sem.available_permits(), 2);
        // An adaptive room that shrank while its permits were out keeps the ones coming back.
        let room = Room::adaptive("test", 2, 8, 2);
        assert_eq!(room.sem.available_permits(), 2, "starts at the floor");
        // Tx not live: the first finish opens the room to the ceiling.
        room.tx_until_ms.store(0, Ordering::Relaxed);
        assert!(room.take(2).await.is_some());
        room.finished(2);
        assert_eq!(room.sem.available_permits(), 8);
        assert!(room.take(8).await.is_some());
        // Tx live again: the first finish drops the limit to the floor (2). Of the 8 out,
        // 6 are owed, so the 2 coming back now are kept.
        room.tx_read(1, 256);
        room.finished(2);
        assert_eq!(room.sem.available_permits(), 0);
        assert_eq!(room.state().owed, 4);
        room.finished(4);
        assert_eq!(room.sem.available_permits(), 0);
        assert_eq!(room.state().owed, 0);
        room.finished(2);
        assert_eq!(room.sem.available_permits(), 2, "the floor's room");
    }
}
