//! [`PrioritySemaphore`]: a semaphore whose waiters are served transactional lane first. Every
//! place a send waits for a scarce resource (a worker's send slots, a provider's concurrency
//! cap, the limiter's local queue) takes its permit from one of these, so a password reset
//! never queues behind bulk work that asked first: a released permit goes to the oldest `tx`
//! waiter if there is one, else to a `bulk` waiter: bulk waiters queue per tenant and are
//! served weighted round-robin across tenants (a tenant of weight w, see [`set_weights`], is
//! served w times a turn), oldest first within one, so a tenant whose email was read later is
//! not served after everything another tenant had admitted before it (the fair read,
//! lua/read.lua, decides what enters; this keeps the shares once it is in). Tx is FIFO.
//!
//! A permit is handed to the waiter it is meant for inside the release, so no later arrival can
//! overtake a waiter; a waiter that gave up (its future dropped) passes the permit on.

use crate::domain::Lane;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

/// The tenants' weights every semaphore of this process serves bulk by (absent: 1).
static WEIGHTS: RwLock<Option<HashMap<String, u32>>> = RwLock::new(None);

/// Set the tenants' weights for every [`PrioritySemaphore`] of this process: the worker's
/// `MAILFLEET_TENANT_WEIGHTS`, the same list the fair read uses.
pub fn set_weights(weights: &[(String, u32)]) {
    let map = (!weights.is_empty()).then(|| weights.iter().cloned().collect());
    *WEIGHTS.write().unwrap_or_else(|p| p.into_inner()) = map;
}

fn weight_of(tenant: Option<&str>) -> u32 {
    let Some(t) = tenant else { return 1 };
    WEIGHTS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(t).copied())
        .unwrap_or(1)
        .max(1)
}
use tokio::sync::oneshot;

/// A permit; dropping it gives it back (to the next waiter, tx first).
#[derive(Debug)]
pub struct Permit {
    /// `None` once defused (a permit that never reached its waiter).
    sem: Option<Arc<Inner>>,
}

type Waiter = oneshot::Sender<Permit>;

#[derive(Debug, Default)]
struct State {
    available: usize,
    /// Tx waiters, oldest first.
    tx: VecDeque<Waiter>,
    bulk: Fair,
}

/// Bulk waiters: a queue per tenant (`None`: email without one), served weighted round-robin.
#[derive(Debug, Default)]
struct Fair {
    queues: HashMap<Option<Arc<str>>, VecDeque<Waiter>>,
    /// Tenants with waiters, in the order they are served next, each with what is left of its
    /// turn (its weight at the start of one).
    turns: VecDeque<(Option<Arc<str>>, u32)>,
    len: usize,
}

impl Fair {
    fn push(&mut self, tenant: Option<&str>, w: Waiter) {
        let key: Option<Arc<str>> = tenant.map(Arc::from);
        let q = self.queues.entry(key.clone()).or_default();
        if q.is_empty() {
            self.turns.push_back((key, weight_of(tenant)));
        }
        q.push_back(w);
        self.len += 1;
    }
    /// The oldest waiter of the tenant whose turn it is; once its turn is used up (or its
    /// queue empty) the tenant goes to the back.
    fn pop(&mut self) -> Option<Waiter> {
        let (key, left) = self.turns.pop_front()?;
        let q = self.queues.get_mut(&key)?;
        let w = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&key);
        } else if left > 1 {
            self.turns.push_front((key, left - 1));
        } else {
            let full = weight_of(key.as_deref());
            self.turns.push_back((key, full));
        }
        self.len -= usize::from(w.is_some());
        w
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever a tx waiter queues ([`PrioritySemaphore::until_tx_waits`]).
    tx_queued: tokio::sync::Notify,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct PrioritySemaphore(Arc<Inner>);

impl PrioritySemaphore {
    pub fn new(permits: usize) -> Self {
        PrioritySemaphore(Arc::new(Inner {
            state: Mutex::new(State {
                available: permits,
                ..State::default()
            }),
            tx_queued: tokio::sync::Notify::new(),
        }))
    }

    /// Wait for a permit as a send of `lane` without a tenant.
    pub async fn acquire(&self, lane: Lane) -> Permit {
        self.acquire_for(lane, None).await
    }

    /// Wait for a permit as a send of `lane` for `tenant` (which only orders bulk).
    pub async fn acquire_for(&self, lane: Lane, tenant: Option<&str>) -> Permit {
        loop {
            let rx = {
                let mut s = self.0.lock();
                // A free permit exists only while nobody of the same or a higher class waits
                // (a release hands permits over), so a bulk send never takes one a queued tx
                // send is owed.
                let ahead = s.tx.len() + if lane == Lane::Bulk { s.bulk.len } else { 0 };
                if s.available > 0 && ahead == 0 {
                    s.available -= 1;
                    return Permit {
                        sem: Some(self.0.clone()),
                    };
                }
                let (tx, rx) = oneshot::channel();
                match lane {
                    Lane::Tx => s.tx.push_back(tx),
                    Lane::Bulk => s.bulk.push(tenant, tx),
                }
                rx
            };
            if lane == Lane::Tx {
                self.0.tx_queued.notify_waiters();
            }
            // A sender is dropped unsent only with the semaphore itself, which `self` keeps
            // alive; should it happen, queue again.
            if let Ok(p) = rx.await {
                return p;
            }
        }
    }

    /// Sends of each lane waiting now: `(tx, bulk)`.
    pub fn waiting(&self) -> (usize, usize) {
        let s = self.0.lock();
        (s.tx.len(), s.bulk.len)
    }

    /// Returns once a tx waiter is queued (at once if one is): a holder that is only waiting
    /// (a bulk send asleep at the head of the limiter's queue) gives its permit up then.
    pub async fn until_tx_waits(&self) {
        loop {
            let queued = self.0.tx_queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if self.0.lock().tx.iter().any(|w| !w.is_closed()) {
                return;
            }
            queued.await;
        }
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.0.lock().available
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand one permit to the first waiter still waiting, tx first, then bulk by tenant
    /// turns; or keep it.
    fn release(self: &Arc<Self>) {
        let mut s = self.lock();
        loop {
            let next = match s.tx.pop_front() {
                Some(w) => Some(w),
                None => s.bulk.pop(),
            };
            let Some(w) = next else { break };
            match w.send(Permit {
                sem: Some(self.clone()),
            }) {
                Ok(()) => return,
                // That waiter gave up: defuse the permit (its drop would release again,
                // under this lock) and try the next one.
                Err(mut p) => p.sem = None,
            }
        }
        s.available += 1;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(sem) = self.sem.take() {
            sem.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Queue `n` waiters of `lane`, each recording its name in `order` when served and holding
    /// its permit until the test lets it go.
    fn waiters(
        sem: &PrioritySemaphore,
        lane: Lane,
        names: &[&'static str],
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Vec<tokio::task::JoinHandle<Permit>> {
        names
            .iter()
            .map(|name| {
                let (sem, order, name) = (sem.clone(), order.clone(), *name);
                tokio::spawn(async move {
                    let p = sem.acquire(lane).await;
                    order.lock().unwrap().push(name);
                    p
                })
            })
            .collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiting_tx_send_is_served_before_every_bulk_send_that_waited_longer() {
        let sem = PrioritySemaphore::new(1);
        let held = sem.acquire(Lane::Bulk).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let bulk = waiters(&sem, Lane::Bulk, &["b1", "b2", "b3"], &order);
        settle().await;
        let tx = waiters(&sem, Lane::Tx, &["t1", "t2"], &order);
        settle().await;
        assert_eq!(sem.waiting(), (2, 3));
        drop(held);
        // Each served waiter hands its permit on when dropped: the order is the grant order.
        for h in tx.into_iter().chain(bulk) {
            drop(h.await.unwrap());
            settle().await;
        }
        assert_eq!(*order.lock().unwrap(), ["t1", "t2", "b1", "b2", "b3"]);
        assert_eq!(sem.available(), 1);
    }

    #[tokio::test]
    async fn a_bulk_send_never_takes_a_free_permit_a_queued_tx_send_is_owed() {
        let sem = PrioritySemaphore::new(1);
        let held = sem.acquire(Lane::Tx).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let tx = waiters(&sem, Lane::Tx, &["t1"], &order);
        settle().await;
        drop(held);
        // The permit went to t1 inside the release; a bulk send arriving now waits.
        let late = sem.clone();
        let bulk = tokio::spawn(async move { late.acquire(Lane::Bulk).await });
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["t1"]);
        assert!(!bulk.is_finished());
        drop(tx.into_iter().next().unwrap().await.unwrap());
        drop(bulk.await.unwrap());
        assert_eq!(sem.available(), 1);
    }

    #[tokio::test]
    async fn bulk_waiters_are_served_round_robin_across_tenants_fifo_within_one() {
        let sem = PrioritySemaphore::new(1);
        let held = sem.acquire(Lane::Bulk).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut all = Vec::new();
        // The big tenant queued five sends before the small ones arrived.
        for (tenant, names) in [
            (Some("big"), &["a1", "a2", "a3", "a4", "a5"][..]),
            (Some("small"), &["s1", "s2"][..]),
            (None, &["n1"][..]),
        ] {
            for name in names {
                let (sem, order, name) = (sem.clone(), order.clone(), *name);
                all.push(tokio::spawn(async move {
                    let p = sem.acquire_for(Lane::Bulk, tenant).await;
                    order.lock().unwrap().push(name);
                    p
                }));
                settle().await;
            }
        }
        assert_eq!(sem.waiting(), (0, 8));
        drop(held);
        for _ in 0..8 {
            settle().await;
            // Whoever holds the permit now lets it go.
            let i = all
                .iter()
                .position(|h| h.is_finished())
                .expect("one served");
            drop(all.remove(i).await.unwrap());
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["a1", "s1", "n1", "a2", "s2", "a3", "a4", "a5"],
            "first come, first served would be a1..a5 before s1"
        );
        assert_eq!(sem.available(), 1);
    }

    #[test]
    fn a_weighted_tenant_is_served_its_weight_in_each_turn() {
        // Process-wide: no other test here uses these tenant names.
        set_weights(&[("gold-w".into(), 3)]);
        let mut f = Fair::default();
        let mut rx = Vec::new();
        for (t, n) in [("gold-w", 7), ("free-w", 4)] {
            for i in 0..n {
                let (tx, r) = oneshot::channel();
                f.push(Some(t), tx);
                rx.push((format!("{t}{i}"), r));
            }
        }
        let mut order = Vec::new();
        while let Some(w) = f.pop() {
            assert!(w.send(Permit { sem: None }).is_ok());
            let i = rx
                .iter_mut()
                .position(|(_, r)| r.try_recv().is_ok())
                .expect("a queued waiter got it");
            order.push(rx.remove(i).0);
        }
        assert_eq!(
            order,
            [
                "gold-w0", "gold-w1", "gold-w2", "free-w0", "gold-w3", "gold-w4", "gold-w5",
                "free-w1", "gold-w6", "free-w2", "free-w3"
            ]
        );
        assert_eq!(f.len, 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_permit_on() {
        let sem = PrioritySemaphore::new(1);
        let held = sem.acquire(Lane::Bulk).await;
        let quitter = {
            let sem = sem.clone();
            tokio::spawn(async move { sem.acquire(Lane::Tx).await })
        };
        settle().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let bulk = waiters(&sem, Lane::Bulk, &["b1"], &order);
        settle().await;
        quitter.abort();
        let _ = quitter.await;
        drop(held);
        let p = tokio::time::timeout(Duration::from_secs(5), bulk.into_iter().next().unwrap())
            .await
            .expect("the permit reached the next waiter")
            .unwrap();
        drop(p);
        assert_eq!(sem.available(), 1, "no permit lost or made");
    }
}
