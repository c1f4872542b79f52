//! The cluster-wide rate limiter's client: permits for a provider (and tenant) from
//! `lua/ratelimit.lua`, fetched for many sends in one round trip.
//!
//! Every send that needs a permit registers its demand, then queues on its bucket, tx sends
//! before bulk ones and FIFO within a lane (`crate::priority`). The
//! one at the head asks Redis for as many permits as there are sends of its lane waiting, as
//! an ask of its lane's class (a bulk ask leaves headroom while the cluster has tx demand;
//! a refused bulk head gives its turn up as soon as a tx send arrives), keeps the
//! surplus in a local stock the next sends take without a round trip, and when Redis grants
//! fewer than asked, sleeps as long as the script says while the others queue behind it. So a
//! batch of 256 sends to one provider costs one script call, not 256. Stock older than the
//! limit's margin is thrown away: a permit must be used about when it was granted, or the
//! request would land outside the window Redis counted it in.
//!
//! A provider's 429 calls [`Limiter::back_off`], which makes every worker wait (the script's
//! back-off flag) for the Retry-After the provider gave.

use crate::config::Limit;
use crate::domain::Lane;
use crate::metrics::METRICS;
use crate::scripts;
use redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most permits asked for in one call.
const MAX_PER_CALL: usize = 1000;
/// Redis failures tolerated in a row before a send gives up on its permit.
const TRIES: u32 = 3;
/// How long a send waits for a permit by default ([`Limiter::with_deadline`]).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limiter unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limiter unavailable: {0}")]
    Pool(#[from] crate::stream::PoolError),
    #[error("rate limiter returned {0:?}")]
    Reply(Value),
    /// The next permit is further off than the limiter's deadline (a back-off after a 429,
    /// or a queue that long): the send should not hold its slot waiting for it.
    #[error("the provider's next permit is {0:?} away")]
    Blocked(Duration),
}

pub use crate::stream::keys::RateLimitKeys as Keys;

/// What one `ratelimit.lua` call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Permits wanted (at least 1).
    pub n: usize,
    /// Added to the window for this call (the steady or the cold margin).
    pub margin_ms: u64,
    /// Permits to give back first: numbers `from..=to` of earlier grants, never used.
    pub give_back: Option<(u64, u64)>,
    /// Only set (or extend) the provider's back-off to this long, granting nothing.
    pub backoff: Option<Duration>,
    /// The class of the ask: a tx ask may fill the window, and marks tx demand for two
    /// windows, during which bulk asks leave headroom (`lua/ratelimit.lua`).
    pub lane: Lane,
    /// Who asks (a worker's limiter and bucket): a tx ask granted short is recorded as this
    /// asker's waiting demand, replaced by its next ask.
    pub asker: u64,
}

/// What a `ratelimit.lua` call granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: usize,
    /// When fewer than asked were granted: how long until the next permit can be.
    pub wait: Duration,
    /// The number of the last permit granted: they are `last - granted + 1 ..= last`.
    pub last: u64,
}

/// One `ratelimit.lua` call.
pub async fn call(
    conn: &mut crate::stream::conn::Connection,
    keys: &Keys,
    limit: &Limit,
    ask: &Ask,
) -> Result<Grant, LimitError> {
    let mut names = vec![
        keys.window.as_str(),
        keys.seq.as_str(),
        keys.block.as_str(),
        keys.tx_demand.as_str(),
        keys.tx_waiting.as_str(),
    ];
    let tenant_limit = match (&keys.tenant, limit.tenant_limit) {
        (Some(t), Some(l)) => {
            names.push(t);
            l
        }
        _ => 0,
    };
    let mut cmd = scripts::RATELIMIT.call(&names);
    cmd.arg(ask.n.max(1))
        .arg(limit.limit)
        .arg(limit.window_ms + ask.margin_ms)
        .arg(tenant_limit)
        .arg(ask.backoff.map_or(0, |d| d.as_millis().max(1) as u64))
        .arg(limit.spread_ms)
        .arg(limit.spread_cap())
        .arg(ask.lane.as_str())
        .arg(format!("{:x}", ask.asker));
    if let Some((from, to)) = ask.give_back {
        cmd.arg(from).arg(to);
    }
    match scripts::run_one(&mut **conn, cmd).await? {
        Value::Array(v) => match v.as_slice() {
            [Value::Int(g), Value::Int(w), Value::Int(last)] => Ok(Grant {
                granted: (*g).max(0) as usize,
                wait: Duration::from_millis((*w).max(0) as u64),
                last: (*last).max(0) as u64,
            }),
            _ => Err(LimitError::Reply(Value::Array(v))),
        },
        other => Err(LimitError::Reply(other)),
    }
}

/// One `ratelimit.lua` call for `n` permits (or, with `backoff`, only the back-off), over the
/// window plus `margin_ms`, as a bulk ask: (granted, wait).
pub async fn take(
    conn: &mut crate::stream::conn::Connection,
    keys: &Keys,
    limit: &Limit,
    margin_ms: u64,
    n: usize,
    backoff: Option<Duration>,
) -> Result<(usize, Duration), LimitError> {
    let ask = Ask {
        n,
        margin_ms,
        give_back: None,
        backoff,
        lane: Lane::Bulk,
        asker: 0,
    };
    let g = call(conn, keys, limit, &ask).await?;
    Ok((g.granted, g.wait))
}

/// The share of the margin (in percent) a permit stays usable for; the rest is for the way
/// from the worker to the provider, which a busy machine stretches most (docs/rate-limiting.md).
const USABLE_PERCENT: u64 = 30;

/// How long a permit stays usable, counted from when it was asked for: [`USABLE_PERCENT`] of
/// the margin (15 ms of the default 50 ms at a 1 s window), so the other 70% covers the way from
/// the worker to the provider.
pub fn max_age(limit: &Limit) -> Duration {
    Duration::from_millis((limit.margin_ms * USABLE_PERCENT / 100).max(1))
}

/// Most permits one call takes: as many as the limit spends in a permit's [`max_age`]. Permits
/// taken together carry one timestamp but leave over a spread; keeping a chunk to what the
/// limit spends in that time keeps the spread inside the margin.
pub fn chunk(limit: &Limit) -> usize {
    let per_age = u64::from(limit.limit) * (limit.margin_ms * USABLE_PERCENT / 100).max(1)
        / limit.window_ms.max(1);
    (per_age as usize).clamp(1, MAX_PER_CALL)
}

#[derive(Default)]
struct Stock {
    /// Permits granted and not used yet: numbers `last - permits + 1 ..= last`.
    permits: usize,
    last: u64,
    /// When the call that granted `permits` was sent: Redis granted them at some instant
    /// after it, so their age is counted from here, never underestimated.
    asked_at: Option<Instant>,
    /// The last call to Redis for this bucket, and when the current run of demand began (a
    /// call more than a window after the previous one starts a new run).
    last_ask: Option<Instant>,
    warm_from: Option<Instant>,
}

impl Stock {
    /// The margin for a call at `now`: the cold margin in the first two windows of a run of
    /// demand, the steady one after.
    fn margin_ms(&mut self, limit: &Limit, now: Instant) -> u64 {
        let window = Duration::from_millis(limit.window_ms);
        if self
            .last_ask
            .is_none_or(|t| now.saturating_duration_since(t) > window)
        {
            self.warm_from = Some(now);
        }
        self.last_ask = Some(now);
        match self.warm_from {
            Some(w) if now.saturating_duration_since(w) < 2 * window => {
                limit.cold_margin_ms.max(limit.margin_ms)
            }
            _ => limit.margin_ms,
        }
    }

    /// Take one permit if one is fresh enough; otherwise empty the stock and say what to give
    /// back (permits too old to use were never used: Redis gets them back).
    fn take_one(&mut self, max_age: Duration) -> Result<(), Option<(u64, u64)>> {
        if self.permits == 0 {
            return Err(None);
        }
        if self.asked_at.is_some_and(|at| at.elapsed() <= max_age) {
            self.permits -= 1;
            return Ok(());
        }
        let stale = (self.last + 1 - self.permits as u64, self.last);
        self.permits = 0;
        Err(Some(stale))
    }
}

struct Bucket {
    /// Sends waiting for a permit from this bucket, per lane (`[tx, bulk]`).
    wanted: [AtomicUsize; 2],
    /// Whose turn it is at the stock (and at asking Redis for more): a tx send's turn comes
    /// before every bulk send's, so permits already fetched go to a waiting tx send first.
    turn: crate::priority::PrioritySemaphore,
    stock: tokio::sync::Mutex<Stock>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            wanted: Default::default(),
            turn: crate::priority::PrioritySemaphore::new(1),
            stock: tokio::sync::Mutex::new(Stock::default()),
        }
    }
}

struct Wanting<'a>(&'a AtomicUsize);
impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// (provider, tenant when the limit has a tenant limit).
type BucketKey = (String, Option<String>);

/// The fewest buckets at which unused ones are swept out.
const SWEEP_FLOOR: usize = 1024;

/// The buckets in use, by provider and tenant. A tenant's bucket exists only while its sends
/// need it: once the map reaches `sweep_at`, buckets no send holds are dropped, and the next
/// sweep waits until it doubles, so a worker that saw a million tenants keeps only the ones
/// sending now, at a cost amortised over the inserts.
struct Buckets {
    map: HashMap<BucketKey, Arc<Bucket>>,
    sweep_at: usize,
}

impl Buckets {
    fn get(&mut self, key: BucketKey) -> Arc<Bucket> {
        if !self.map.contains_key(&key) && self.map.len() >= self.sweep_at {
            // A bucket only this map holds has no send waiting on it; its unused stock, if
            // any, is only room left unused in the window, never a request over it.
            self.map.retain(|_, b| Arc::strong_count(b) > 1);
            self.sweep_at = (self.map.len() * 2).max(SWEEP_FLOOR);
        }
        self.map.entry(key).or_default().clone()
    }
}

/// Permits for every provider this worker sends to.
pub struct Limiter {
    /// This limiter's name as an asker (random); each bucket asks as `id ^ hash(tenant)`.
    id: u64,
    pool: crate::stream::Pool,
    /// The connections a tx send asks over (the worker's tx runtime drives them); None: `pool`.
    tx_pool: Option<crate::stream::Pool>,
    prefix: String,
    buckets: std::sync::Mutex<Buckets>,
    /// The longest one [`Limiter::acquire`] waits.
    deadline: Duration,
}

impl Limiter {
    pub fn new(pool: crate::stream::Pool, prefix: impl Into<String>) -> Self {
        Limiter {
            id: rand::random(),
            pool,
            tx_pool: None,
            prefix: prefix.into(),
            buckets: std::sync::Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The longest single wait [`Limiter::acquire`] sleeps: when Redis says the next permit
    /// is further off than this (a back-off after a 429, a window far longer than the limit
    /// allows), `acquire` returns [`LimitError::Blocked`] at once instead of sleeping. Time
    /// spent queued behind this worker's other sends does not count.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Tx sends ask Redis over `pool`'s connections, not over the shared ones.
    pub fn with_tx_pool(mut self, pool: crate::stream::Pool) -> Self {
        self.tx_pool = Some(pool);
        self
    }

    fn pool(&self, lane: Lane) -> &crate::stream::Pool {
        match (lane, &self.tx_pool) {
            (Lane::Tx, Some(p)) => p,
            _ => &self.pool,
        }
    }

    fn bucket(&self, provider: &str, tenant: Option<&str>) -> Arc<Bucket> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.get((provider.to_owned(), tenant.map(str::to_owned)))
    }

    /// Wait for one permit to send to `provider` (for `tenant`, when the limit has a tenant
    /// limit) as a send of `lane`: tx sends are served first. Errs when Redis failed
    /// [`TRIES`] times in a row, or with [`LimitError::Blocked`] when the next permit is
    /// further off than the deadline allows.
    pub async fn acquire(
        &self,
        provider: &str,
        limit: &Limit,
        tenant: Option<&str>,
        lane: Lane,
    ) -> Result<(), LimitError> {
        // Whose turn it is in the local queue (bulk by tenant round-robin, `crate::priority`);
        // the bucket is the tenant's own only under a tenant limit.
        let who = tenant;
        let tenant = tenant.filter(|_| limit.tenant_limit.is_some());
        let bucket = self.bucket(provider, tenant);
        let wanted = &bucket.wanted[lane.index()];
        wanted.fetch_add(1, Ordering::SeqCst);
        let _wanting = Wanting(wanted);
        // Let the other sends of this batch register before the first of them asks Redis.
        tokio::task::yield_now().await;
        let max_age = max_age(limit);
        let keys = Keys::new(&self.prefix, provider, tenant);
        let asker = self.id
            ^ u64::from(crate::stream::keys::fnv1a32(
                tenant.unwrap_or("").as_bytes(),
            ));
        let started = Instant::now();
        let mut failures = 0;
        let mut give_back = None;
        // After a refusal: no ask before this (Redis said when the next permit can be).
        let mut not_before: Option<Instant> = None;
        'turn: loop {
            let _turn = bucket.turn.acquire_for(lane, who).await;
            let mut stock = bucket.stock.lock().await;
            loop {
                match stock.take_one(max_age) {
                    Ok(()) => break 'turn,
                    Err(Some(stale)) => {
                        give_back = Some(stale);
                        METRICS
                            .ratelimit_given_back
                            .with_label_values(&[provider])
                            .inc_by(stale.1 + 1 - stale.0);
                    }
                    Err(None) => {}
                }
                if let Some(t) = not_before.take() {
                    let left = t.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        if lane == Lane::Tx {
                            tokio::time::sleep(left).await;
                        } else {
                            // A refused bulk send sleeps at the head of the queue, but gives
                            // its turn up to a tx send that queues meanwhile.
                            tokio::select! {
                                _ = tokio::time::sleep(left) => {}
                                _ = bucket.turn.until_tx_waits() => {
                                    not_before = Some(t);
                                    continue 'turn;
                                }
                            }
                        }
                    }
                }
                let asked = Instant::now();
                let ask = Ask {
                    n: wanted.load(Ordering::SeqCst).clamp(1, chunk(limit)),
                    margin_ms: stock.margin_ms(limit, asked),
                    give_back,
                    backoff: None,
                    lane,
                    asker,
                };
                let result = match self.pool(lane).get().await {
                    Ok(mut conn) => call(&mut conn, &keys, limit, &ask).await,
                    Err(e) => Err(e.into()),
                };
                METRICS.ratelimit_calls.with_label_values(&[provider]).inc();
                let wait = match result {
                    Ok(g) => {
                        failures = 0;
                        give_back = None;
                        if g.granted > 0 {
                            stock.permits = g.granted - 1;
                            stock.last = g.last;
                            stock.asked_at = Some(asked);
                            break 'turn;
                        }
                        let wait = g.wait.max(Duration::from_millis(1));
                        // Only Redis's own answer counts: a wait in this worker's queue is
                        // the limit being used, and deferring it would only churn the backlog.
                        if wait > self.deadline {
                            return Err(LimitError::Blocked(wait));
                        }
                        wait
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= TRIES {
                            return Err(e);
                        }
                        Duration::from_millis(100 << failures)
                    }
                };
                not_before = Some(Instant::now() + wait);
            }
        }
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            METRICS
                .ratelimit_wait
                .with_label_values(&[provider])
                .inc_by(waited.as_secs_f64());
        }
        Ok(())
    }

    /// The provider said to slow down: make every worker wait `for_` before its next permit.
    pub async fn back_off(
        &self,
        provider: &str,
        limit: &Limit,
        for_: Duration,
    ) -> Result<(), LimitError> {
        let keys = Keys::new(&self.prefix, provider, None);
        let mut conn = self.pool.get().await?;
        take(&mut conn, &keys, limit, limit.margin_ms, 1, Some(for_)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
