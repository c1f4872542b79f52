//! The recorder: commits outcomes to Postgres in batches, then finishes their entries in Redis
//! (ack, retry, dead letter) in one pipeline, then gives back in-flight room.
//!
//! Invariant: the Redis pipeline for a batch is built only from outcomes the Postgres statement
//! applied, and runs only after that statement committed.

use super::Shared;
use super::persist::{GiveUp, Op, until_ok};
use crate::domain::Lane;
use crate::metrics::METRICS;
use crate::store::emails::{self, Outcome};
use crate::stream::consumer::{DeadLetter, Finish};
use crate::stream::{Job, RawEntry, Source};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

#[derive(Debug, Clone)]
pub struct EntryRef {
    pub partition: u16,
    pub lane: Lane,
    /// The tenant whose bulk stream holds the entry (`None`: the lane's shared stream).
    pub stream_tenant: Option<Arc<str>>,
    pub entry_id: String,
}

impl EntryRef {
    pub(super) fn of(r: &RawEntry) -> Self {
        EntryRef {
            partition: r.partition,
            lane: r.lane,
            stream_tenant: r.stream_tenant.clone(),
            entry_id: r.entry_id.clone(),
        }
    }
    pub(super) fn of_job(j: &Job) -> Self {
        EntryRef {
            partition: j.partition,
            lane: j.lane,
            stream_tenant: j.stream_tenant.clone(),
            entry_id: j.entry_id.clone(),
        }
    }
    /// The stream the entry lives on.
    pub fn source(&self) -> Source {
        Source {
            partition: self.partition,
            lane: self.lane,
            tenant: self.stream_tenant.clone(),
        }
    }
}

/// What to do in Redis once the outcome is committed.
#[derive(Debug, Clone)]
pub enum After {
    Ack,
    /// Back to the delayed set, due `delay_ms` from now by Redis' clock.
    Retry {
        delay_ms: i64,
        member: String,
    },
    Dead(DeadLetter),
}

/// The fate of one entry read (or, for `Abandon`, of several).
// Nearly every item is an `Outcome`: boxing it would add an allocation per email to save
// space on the rare small variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Item {
    /// An attempt's outcome: record, then finish the entry as `after` says.
    Outcome {
        outcome: Outcome,
        entry: EntryRef,
        after: After,
        enqueued_at_ms: i64,
    },
    /// Nothing to record (already final in Postgres, or a repeat in the batch): just ack.
    Ack(EntryRef),
    /// Poison: dead-letter it (no Postgres row).
    Dead(EntryRef, DeadLetter),
    /// Entries of a lane given up on without any write (shutdown during an outage, or another
    /// live claim sends them); they stay pending.
    Abandon(Lane, usize),
}

impl Item {
    fn lane(&self) -> Lane {
        match self {
            Item::Outcome { entry, .. } | Item::Ack(entry) | Item::Dead(entry, _) => entry.lane,
            Item::Abandon(lane, _) => *lane,
        }
    }
}

/// Where batch tasks put their items: the recorder of the item's lane.
#[derive(Clone)]
pub struct Outbox([UnboundedSender<Item>; 2]);

impl Outbox {
    /// An outbox and the receiving end of each lane's recorder, `[tx, bulk]`.
    pub fn new() -> (Outbox, [UnboundedReceiver<Item>; 2]) {
        let (tx_out, tx_in) = mpsc::unbounded_channel();
        let (bulk_out, bulk_in) = mpsc::unbounded_channel();
        (Outbox([tx_out, bulk_out]), [tx_in, bulk_in])
    }

    /// False only once the lane's recorder is gone (the worker is stopping).
    pub fn send(&self, item: Item) -> bool {
        self.0[item.lane().index()].send(item).is_ok()
    }
}

/// One lane's recorder: runs until every [`Outbox`] is dropped and its queue is empty.
pub(super) async fn run(shared: Arc<Shared>, lane: Lane, mut rx: UnboundedReceiver<Item>) {
    let max = shared.settings.record_batch.max(1);
    let mut buf = Vec::with_capacity(max);
    // Kept across flushes: a pool checkout costs a recycle round trip (UNWATCH, PING).
    let mut conn = None;
    while let Some(first) = rx.recv().await {
        buf.push(first);
        while buf.len() < max {
            match rx.try_recv() {
                Ok(i) => buf.push(i),
                Err(_) => break,
            }
        }
        flush(&shared, lane, &mut buf, &mut conn).await;
    }
}

async fn flush(
    shared: &Shared,
    lane: Lane,
    items: &mut Vec<Item>,
    conn: &mut Option<crate::stream::conn::Connection>,
) {
    let outcomes: Vec<Outcome> = items
        .iter()
        .filter_map(|i| match i {
            Item::Outcome { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect();
    let applied: HashSet<uuid::Uuid> = until_ok(
        shared,
        Op {
            errors: &METRICS.store_errors,
            label: "record",
            failed: "recording outcomes failed; holding their acks",
            first: Duration::from_millis(50),
            give_up: GiveUp::Never,
        },
        || emails::record(shared.pg(lane), &outcomes),
    )
    .await
    .map(|ids| ids.into_iter().collect())
    .unwrap_or_default();
    if !outcomes.is_empty() {
        METRICS.record_batch.observe(outcomes.len() as f64);
        shared.live.remove(outcomes.iter().map(|o| (o.id, o.token)));
    }

    let mut finish = Finish::default();
    // Finished entries per lane, `[tx, bulk]`: their room goes back to the lane's pool.
    let mut entries = [0usize; 2];
    let now_ms = chrono::Utc::now().timestamp_millis();
    for item in items.drain(..) {
        match item {
            Item::Outcome {
                outcome,
                entry,
                after,
                enqueued_at_ms,
            } => {
                entries[entry.lane.index()] += 1;
                if !applied.contains(&outcome.id) {
                    // The claim moved on: a newer attempt owns the job and its entry.
                    METRICS.stale_outcomes.inc();
                    continue;
                }
                METRICS
                    .emails
                    .with_label_values(&[
                        entry.lane.as_str(),
                        outcome.provider.as_deref().unwrap_or("none"),
                        outcome.status.as_str(),
                    ])
                    .inc();
                METRICS
                    .end_to_end
                    .with_label_values(&[entry.lane.as_str()])
                    .observe(((now_ms - enqueued_at_ms).max(0) as f64) / 1000.0);
                match after {
                    After::Ack => finish.ack(entry.source(), entry.entry_id),
                    After::Retry { delay_ms, member } => {
                        finish.retry(entry.source(), entry.entry_id, delay_ms, member)
                    }
                    After::Dead(d) => {
                        METRICS
                            .dead_letters
                            .with_label_values(&[d.reason.as_str()])
                            .inc();
                        finish.dead_letter(entry.source(), d)
                    }
                }
            }
            Item::Ack(entry) => {
                entries[entry.lane.index()] += 1;
                finish.ack(entry.source(), entry.entry_id);
            }
            Item::Dead(entry, d) => {
                entries[entry.lane.index()] += 1;
                finish.dead_letter(entry.source(), d);
            }
            Item::Abandon(lane, n) => entries[lane.index()] += n,
        }
    }
    if !finish.is_empty() {
        // Recorded in Postgres already: if acks never land, the entries are reclaimed later,
        // the claim finds them final, and they are acked (or dead-lettered) then.
        // The kept connection goes in and out of a slot so each try can own it.
        let slot = std::sync::Mutex::new(conn.take());
        let (slot_ref, finish) = (&slot, &finish);
        until_ok(
            shared,
            Op {
                errors: &METRICS.redis_errors,
                label: "finish",
                failed: "acking failed; retrying",
                first: Duration::from_millis(50),
                give_up: GiveUp::After(8),
            },
            move || async move {
                let kept = slot_ref.lock().unwrap_or_else(|p| p.into_inner()).take();
                let mut c = match kept {
                    Some(c) => c,
                    None => shared.redis(lane).get().await.map_err(|e| e.to_string())?,
                };
                finish
                    .execute(&mut *c, &shared.deps.keys)
                    .await
                    .map_err(|e| e.to_string())?;
                *slot_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                Ok::<(), String>(())
            },
        )
        .await;
        *conn = slot.into_inner().unwrap_or_else(|p| p.into_inner());
    }
    for lane in Lane::ALL {
        shared.release(lane, entries[lane.index()]);
    }
}
