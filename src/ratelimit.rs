//! The cluster-wide rate limiter's client: permits for a provider (and tenant) from
//! `lua/ratelimit.lua`, fetched for many sends in one round trip.
//!
//! Every send that needs a permit registers its demand, then queues (FIFO) on its bucket. The
//! one at the head asks Redis for as many permits as there are sends waiting, keeps the
//! surplus in a local stock the next sends take without a round trip, and when Redis grants
//! fewer than asked, sleeps as long as the script says while the others queue behind it. So a
//! batch of 256 sends to one provider costs one script call, not 256. Stock older than the
//! limit's margin is thrown away: a permit must be used about when it was granted, or the
//! request would land outside the window Redis counted it in.
//!
//! A provider's 429 calls [`Limiter::back_off`], which makes every worker wait (the script's
//! back-off flag) for the Retry-After the provider gave.

use crate::config::Limit;
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

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limiter unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limiter unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("rate limiter returned {0:?}")]
    Reply(Value),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub window: String,
    pub seq: String,
    pub block: String,
    pub tenant: Option<String>,
}

impl Keys {
    pub fn new(prefix: &str, provider: &str, tenant: Option<&str>) -> Self {
        let base = format!("{prefix}:rl:{{{provider}}}");
        Keys {
            window: format!("{base}:w"),
            seq: format!("{base}:seq"),
            block: format!("{base}:block"),
            tenant: tenant.map(|t| format!("{base}:t:{t}")),
        }
    }
}

/// One `ratelimit.lua` call: `n` permits (or, with `backoff`, only the back-off).
pub async fn take(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    limit: &Limit,
    n: usize,
    backoff: Option<Duration>,
) -> Result<(usize, Duration), LimitError> {
    let mut names = vec![keys.window.as_str(), keys.seq.as_str(), keys.block.as_str()];
    let tenant_limit = match (&keys.tenant, limit.tenant_limit) {
        (Some(t), Some(l)) => {
            names.push(t);
            l
        }
        _ => 0,
    };
    let mut cmd = scripts::RATELIMIT.call(&names);
    cmd.arg(n.max(1))
        .arg(limit.limit)
        .arg(limit.window_ms + limit.margin_ms)
        .arg(tenant_limit)
        .arg(backoff.map_or(0, |d| d.as_millis().max(1) as u64))
        .arg(limit.spread_ms)
        .arg(limit.spread_cap());
    match scripts::run_one(&mut **conn, cmd).await? {
        Value::Array(v) => match v.as_slice() {
            [Value::Int(g), Value::Int(w)] => Ok((
                (*g).max(0) as usize,
                Duration::from_millis((*w).max(0) as u64),
            )),
            _ => Err(LimitError::Reply(Value::Array(v))),
        },
        other => Err(LimitError::Reply(other)),
    }
}

/// Most permits one call takes: as many as the limit allows in one margin. Permits taken
/// together carry one timestamp but leave over a spread; keeping a chunk to what the limit
/// spends in a margin keeps that spread inside the margin.
pub fn chunk(limit: &Limit) -> usize {
    let per_margin = u64::from(limit.limit) * limit.margin_ms.max(1) / limit.window_ms.max(1);
    (per_margin as usize).clamp(1, MAX_PER_CALL)
}

#[derive(Default)]
struct Stock {
    permits: usize,
    granted_at: Option<Instant>,
}

#[derive(Default)]
struct Bucket {
    /// Sends waiting for a permit from this bucket.
    wanted: AtomicUsize,
    stock: tokio::sync::Mutex<Stock>,
}

struct Wanting<'a>(&'a AtomicUsize);
impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// (provider, tenant when the limit has a tenant limit).
type BucketKey = (String, Option<String>);

/// Permits for every provider this worker sends to.
pub struct Limiter {
    pool: deadpool_redis::Pool,
    prefix: String,
    buckets: std::sync::Mutex<HashMap<BucketKey, Arc<Bucket>>>,
}

impl Limiter {
    pub fn new(pool: deadpool_redis::Pool, prefix: impl Into<String>) -> Self {
        Limiter {
            pool,
            prefix: prefix.into(),
            buckets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn bucket(&self, provider: &str, tenant: Option<&str>) -> Arc<Bucket> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.entry((provider.to_owned(), tenant.map(str::to_owned)))
            .or_default()
            .clone()
    }

    /// Wait for one permit to send to `provider` (for `tenant`, when the limit has a tenant
    /// limit). Errs only when Redis failed [`TRIES`] times in a row.
    pub async fn acquire(
        &self,
        provider: &str,
        limit: &Limit,
        tenant: Option<&str>,
    ) -> Result<(), LimitError> {
        let tenant = tenant.filter(|_| limit.tenant_limit.is_some());
        let bucket = self.bucket(provider, tenant);
        bucket.wanted.fetch_add(1, Ordering::SeqCst);
        let _wanting = Wanting(&bucket.wanted);
        // Let the other sends of this batch register before the first of them asks Redis.
        tokio::task::yield_now().await;
        let max_age = Duration::from_millis(limit.margin_ms.max(1));
        let keys = Keys::new(&self.prefix, provider, tenant);
        let mut stock = bucket.stock.lock().await;
        let started = Instant::now();
        let mut failures = 0;
        loop {
            if stock.permits > 0 && stock.granted_at.is_some_and(|at| at.elapsed() <= max_age) {
                stock.permits -= 1;
                break;
            }
            stock.permits = 0;
            let n = bucket.wanted.load(Ordering::SeqCst).clamp(1, chunk(limit));
            let result = match self.pool.get().await {
                Ok(mut conn) => take(&mut conn, &keys, limit, n, None).await,
                Err(e) => Err(e.into()),
            };
            METRICS.ratelimit_calls.with_label_values(&[provider]).inc();
            match result {
                Ok((granted, wait)) => {
                    failures = 0;
                    if granted > 0 {
                        stock.permits = granted - 1;
                        stock.granted_at = Some(Instant::now());
                        break;
                    }
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= TRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100 << failures)).await;
                }
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
        take(&mut conn, &keys, limit, 1, Some(for_)).await?;
        Ok(())
    }
}
