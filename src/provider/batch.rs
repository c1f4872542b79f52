//! Bulk sends coalesced into a vendor's batch request (docs/providers.md, "Batch sends").
//!
//! Every bulk send still walks its own route: breaker, caps, its own rate-limit permit, its own
//! fate. Only the last step changes: instead of a request of its own, the send hands its
//! [`Part`] (the vendor's per-message piece, serialized) to the provider's [`Batcher`] and waits
//! for its own answer. The batcher groups parts that can share one request (the same
//! [`Part::key`]: the same shared fields), and sends a group when it holds `max` parts or
//! `max_bytes`, or `linger` after its first part arrived: the sends of one read batch reach it
//! within a few hundred microseconds of each other, so a group is usually a read batch.
//!
//! The vendor's answer is read per message ([`PartResult`]): accepted with its own message id,
//! failed alone (a validation error naming that message), or to be sent again (another
//! message of the batch failed validation, which refuses the whole request): the send takes a
//! new permit and goes again, alone when the vendor did not say which message was at fault.

use super::{Accepted, SendError};
use crate::metrics::METRICS;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// One message's piece of a batch request.
#[derive(Debug, Clone)]
pub struct Part {
    /// Parts with the same key share `shared` and may go in one request.
    pub key: u64,
    /// The fields every message of the request shares, serialized (the vendor's dialect knows
    /// how to join them with the parts).
    pub shared: Arc<str>,
    /// The message's own piece, serialized.
    pub body: String,
}

/// What became of one part of a batch request.
#[derive(Debug, Clone, PartialEq)]
pub enum PartResult {
    /// The vendor's answer for this message, as a single send would have had it.
    Done(Result<Accepted, SendError>),
    /// The request was refused for another message's sake: send this one again (with a
    /// permit of its own), alone when the vendor did not name the message at fault.
    Resend { alone: bool },
}

/// A vendor's batch endpoint.
pub trait BatchDialect: Send + Sync {
    /// The message's part, or None when it must go in a request of its own (too big for the
    /// vendor's per-message limits in a batch).
    fn part(&self, msg: &super::Message<'_>) -> Option<Part>;
    /// Send `parts` (all with the same key, so the same `shared`) in one request; one result
    /// per part, in order.
    fn send_parts<'a>(
        &'a self,
        shared: &'a str,
        parts: &'a [String],
    ) -> BoxFuture<'a, Vec<PartResult>>;
}

/// How a provider's batches are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most messages per request.
    pub max: usize,
    /// Most bytes of parts per request (the vendor's request size limit, with room to spare).
    pub max_bytes: usize,
    /// How long a group waits for more parts after its first (zero: only until the task that
    /// sends it runs).
    pub linger: Duration,
}

struct Group {
    /// Which group this is, so a linger timer never sends a later group of the same key.
    generation: u64,
    shared: Arc<str>,
    parts: Vec<String>,
    waiters: Vec<oneshot::Sender<PartResult>>,
    bytes: usize,
}

/// Groups one provider's bulk parts into batch requests.
pub struct Batcher {
    name: String,
    dialect: Arc<dyn BatchDialect>,
    limits: BatchLimits,
    groups: Mutex<(u64, HashMap<u64, Group>)>,
}

impl Batcher {
    pub fn new(
        name: impl Into<String>,
        dialect: Arc<dyn BatchDialect>,
        limits: BatchLimits,
    ) -> Self {
        Batcher {
            name: name.into(),
            dialect,
            limits: BatchLimits {
                max: limits.max.max(1),
                ..limits
            },
            groups: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn dialect(&self) -> &dyn BatchDialect {
        self.dialect.as_ref()
    }

    /// Send `part` in the next request of its group; resolves with its own answer. A batch
    /// whose request task ended without an answer (the runtime shutting down) is answered
    /// as ambiguous: the request may have left.
    pub async fn send(self: &Arc<Self>, part: Part) -> PartResult {
        let (tx, rx) = oneshot::channel();
        let (full, timer) = {
            let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let (next_gen, groups) = &mut *g;
            let mut timer = None;
            let group = groups.entry(part.key).or_insert_with(|| {
                *next_gen += 1;
                timer = Some(*next_gen);
                Group {
                    generation: *next_gen,
                    shared: part.shared.clone(),
                    parts: Vec::new(),
                    waiters: Vec::new(),
                    bytes: part.shared.len(),
                }
            });
            group.bytes += part.body.len();
            group.parts.push(part.body);
            group.waiters.push(tx);
            let full = group.parts.len() >= self.limits.max || group.bytes >= self.limits.max_bytes;
            (full.then(|| groups.remove(&part.key)).flatten(), timer)
        };
        if let Some(group) = full {
            let me = self.clone();
            tokio::spawn(async move { me.flush(group).await });
        } else if let Some(generation) = timer {
            let me = self.clone();
            let key = part.key;
            tokio::spawn(async move {
                // No linger: the group takes the sends that reach it before this task runs
                // (no timer, whose firing a busy runtime delays).
                if me.limits.linger.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(me.limits.linger).await;
                }
                let group = {
                    let mut g = me.groups.lock().unwrap_or_else(|p| p.into_inner());
                    match g.1.get(&key) {
                        Some(gr) if gr.generation == generation => g.1.remove(&key),
                        _ => None,
                    }
                };
                if let Some(group) = group {
                    me.flush(group).await;
                }
            });
        }
        rx.await.unwrap_or_else(|_| {
            PartResult::Done(Err(SendError {
                class: super::ErrorClass::Ambiguous,
                message: "the batch request ended without an answer".into(),
                http_status: None,
                retry_after: None,
            }))
        })
    }

    async fn flush(&self, group: Group) {
        METRICS
            .provider_batch_size
            .with_label_values(&[&self.name])
            .observe(group.parts.len() as f64);
        let results = self.dialect.send_parts(&group.shared, &group.parts).await;
        let mut results = results.into_iter();
        for w in group.waiters {
            // A dialect that answered fewer results than parts leaves the rest unknown.
            let r = results.next().unwrap_or_else(|| {
                PartResult::Done(Err(SendError {
                    class: super::ErrorClass::Ambiguous,
                    message: "the batch answer did not cover this message".into(),
                    http_status: None,
                    retry_after: None,
                }))
            });
            let _ = w.send(r);
        }
    }
}

/// `open`, the serialized `parts` separated by commas, then `close`: a batch request's body
/// (each part is a JSON value).
pub fn join_parts(open: &str, parts: &[String], close: &str) -> String {
    let mut b = String::with_capacity(
        open.len() + close.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
    );
    b.push_str(open);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        b.push_str(p);
    }
    b.push_str(close);
    b
}

/// A hash of the shared fields: the group key.
pub fn key_of(shared: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shared.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each part with its own text as the message id, and counts requests.
    struct Echo {
        requests: AtomicUsize,
        sizes: Mutex<Vec<usize>>,
    }

    impl BatchDialect for Echo {
        fn part(&self, _: &super::super::Message<'_>) -> Option<Part> {
            None
        }
        fn send_parts<'a>(
            &'a self,
            shared: &'a str,
            parts: &'a [String],
        ) -> BoxFuture<'a, Vec<PartResult>> {
            Box::pin(async move {
                self.requests.fetch_add(1, Ordering::SeqCst);
                self.sizes.lock().unwrap().push(parts.len());
                parts
                    .iter()
                    .map(|p| {
                        PartResult::Done(Ok(Accepted {
                            message_id: Some(format!("{shared}/{p}")),
                            http_status: 202,
                        }))
                    })
                    .collect()
            })
        }
    }

    fn part(shared: &str, body: &str) -> Part {
        Part {
            key: key_of(shared),
            shared: shared.into(),
            body: body.into(),
        }
    }

    fn batcher(max: usize, linger_ms: u64) -> (Arc<Batcher>, Arc<Echo>) {
        let echo = Arc::new(Echo {
            requests: AtomicUsize::new(0),
            sizes: Mutex::new(Vec::new()),
        });
        let b = Arc::new(Batcher::new(
            "test",
            echo.clone(),
            BatchLimits {
                max,
                max_bytes: 1 << 20,
                linger: Duration::from_millis(linger_ms),
            },
        ));
        (b, echo)
    }

    #[tokio::test]
    async fn parts_sent_together_share_one_request_and_each_gets_its_own_answer() {
        let (b, echo) = batcher(100, 20);
        let sends = (0..10).map(|i| {
            let b = b.clone();
            async move { b.send(part("s", &i.to_string())).await }
        });
        let results = futures::future::join_all(sends).await;
        assert_eq!(echo.requests.load(Ordering::SeqCst), 1);
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(
                r,
                PartResult::Done(Ok(Accepted {
                    message_id: Some(format!("s/{i}")),
                    http_status: 202
                }))
            );
        }
    }

    #[tokio::test]
    async fn without_a_linger_a_group_holds_the_sends_that_reached_it_before_its_task_ran() {
        let (b, echo) = batcher(100, 0);
        let sends = (0..10).map(|i| {
            let b = b.clone();
            async move { b.send(part("s", &i.to_string())).await }
        });
        // All ten are handed in within one poll of the join, before the request task runs.
        let results = futures::future::join_all(sends).await;
        assert_eq!(echo.requests.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| matches!(r, PartResult::Done(Ok(_)))));
        // One send on its own is not held back waiting for company.
        let r = b.send(part("s", "alone")).await;
        assert!(matches!(r, PartResult::Done(Ok(_))));
        assert_eq!(*echo.sizes.lock().unwrap(), vec![10, 1]);
    }

    #[tokio::test]
    async fn a_group_goes_when_full_and_keys_never_mix() {
        let (b, echo) = batcher(4, 20);
        let sends = (0..10).map(|i| {
            let b = b.clone();
            let shared = if i % 2 == 0 { "even" } else { "odd" };
            async move { b.send(part(shared, &i.to_string())).await }
        });
        let results = futures::future::join_all(sends).await;
        // Five parts per key: a full group of 4 and a lingering 1, for each key.
        let mut sizes = echo.sizes.lock().unwrap().clone();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![1, 1, 4, 4]);
        for (i, r) in results.into_iter().enumerate() {
            let shared = if i % 2 == 0 { "even" } else { "odd" };
            let PartResult::Done(Ok(a)) = r else {
                panic!("{r:?}")
            };
            assert_eq!(a.message_id, Some(format!("{shared}/{i}")));
        }
    }
}
