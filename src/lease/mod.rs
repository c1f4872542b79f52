//! Leader election: a Redis lease with a fencing token (`lua/lease.lua`), and the
//! fenced-transaction helper every leader side effect goes through.
//!
//! A [`Lease`] is only ever made by winning [`acquire`], so a [`FenceToken`] can only come from a
//! won lease. The holder renews at TTL/3 and stops acting at a local monotonic deadline (the
//! `Instant` taken *before* the acquire or renewal was sent, plus the TTL, minus a margin), never
//! at the time Redis reports: a process paused past its TTL wakes up believing nothing, checks
//! its clock, and stops.
//!
//! The deadline is the cheap guard: a leader checks it before each unit of work. The fence is
//! the real one, because a pause can land anywhere after that check: [`fenced`] opens every
//! leader transaction by moving `leader_fence` to its token ([`crate::store::fence::advance`]);
//! once a successor has written with a higher token, the stale leader's transaction matches no
//! row, rolls back, and is counted in `mailfleet_fenced_writes_rejected_total`.
//!
//! Architecture Invariant: nothing outside this module constructs a `FenceToken` or runs
//! `lease.lua`; every leader write starts with [`fenced`].

use crate::metrics::METRICS;
use crate::scripts::{self, LEASE};
use crate::store::{self, StoreError};
use redis::Value;
use redis::aio::ConnectionLike;
use sqlx::{PgPool, Postgres, Transaction};
use std::fmt;
use std::time::{Duration, Instant};

/// The lease the scheduler runs under.
pub const SCHEDULER: &str = "scheduler";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Redis failed while {doing} the {name} lease: {source}")]
    Redis {
        doing: &'static str,
        name: String,
        source: redis::RedisError,
    },
    #[error("Redis answered lease.lua with something unexpected: {0}")]
    Protocol(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of a fenced write that a newer leader has overtaken.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fenced write rejected: the {name} fence has moved past token {token}")]
    Rejected { name: String, token: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fencing token: proof that this process won the named lease with this number. Only
/// [`acquire`] makes one.
#[derive(Clone, PartialEq, Eq)]
pub struct FenceToken {
    name: String,
    value: i64,
}

impl FenceToken {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn value(&self) -> i64 {
        self.value
    }
}

impl fmt::Debug for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FenceToken({}#{})", self.name, self.value)
    }
}

pub use crate::stream::keys::LeaseKeys;

/// A won lease. Acting on it is allowed only while [`Lease::is_valid`].
#[derive(Debug)]
pub struct Lease {
    keys: LeaseKeys,
    owner: String,
    ttl: Duration,
    token: FenceToken,
    /// Behind a lock so the renewing task and the acting tasks share one `Lease`.
    deadline: std::sync::Mutex<Instant>,
}

/// What an acquisition attempt found.
#[derive(Debug)]
pub enum Acquired {
    Won(Lease),
    /// Another owner holds the lease with `holder_token`; it expires in `expires_in` unless
    /// renewed.
    Held {
        holder_token: i64,
        expires_in: Duration,
    },
}

/// Who holds the lease now and for how much longer (None when free).
pub async fn holder<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &LeaseKeys,
) -> redis::RedisResult<Option<(String, Duration)>> {
    let (owner, pttl): (Option<String>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&keys.lease)
        .cmd("PTTL")
        .arg(&keys.lease)
        .query_async(conn)
        .await?;
    // The value is `<token>:<owner>`.
    Ok(owner.map(|v| {
        let owner = v.split_once(':').map_or(v.as_str(), |(_, o)| o).to_owned();
        (owner, Duration::from_millis(pttl.max(0) as u64))
    }))
}

/// How much of the TTL is kept back from the local deadline: slack for the clock-rate
/// difference between this host and Redis and for the time the reply took to arrive.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(2))
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Try to take the lease `name` for `owner`. A probe first: only when the lease is free is the
/// floor (the highest token the fence has seen) read from Postgres and the lease taken, so the
/// token is above anything a previous holder could have written with, and candidates polling a
/// held lease cost Redis one script call and Postgres nothing.
pub async fn acquire<C: ConnectionLike + Send>(
    conn: &mut C,
    pg: &PgPool,
    keys: &LeaseKeys,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Acquired, LeaseError> {
    let mut floor = -1;
    loop {
        let started = Instant::now();
        let mut cmd = LEASE.call(&[&keys.lease, &keys.fence]);
        cmd.arg("acquire")
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(floor);
        let v = scripts::run_one(conn, cmd)
            .await
            .map_err(|source| LeaseError::Redis {
                doing: "acquiring",
                name: name.to_owned(),
                source,
            })?;
        return match ints(&v).as_deref() {
            Some([2, _, _]) if floor == -1 => {
                floor = store::fence::current(pg, name).await?;
                continue;
            }
            Some([1, token, _]) => Ok(Acquired::Won(Lease {
                keys: keys.clone(),
                owner: owner.to_owned(),
                ttl,
                token: FenceToken {
                    name: name.to_owned(),
                    value: *token,
                },
                deadline: std::sync::Mutex::new(started + ttl.saturating_sub(margin(ttl))),
            })),
            Some([0, holder, pttl]) => Ok(Acquired::Held {
                holder_token: *holder,
                expires_in: Duration::from_millis((*pttl).max(0) as u64),
            }),
            _ => Err(LeaseError::Protocol(format!("{v:?}"))),
        };
    }
}

impl Lease {
    pub fn token(&self) -> &FenceToken {
        &self.token
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    pub fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Whether this process may still act: its local deadline has not passed.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.deadline()
    }

    /// Extend the lease. `Ok(false)` means another owner holds it now (or it expired): stop
    /// acting. On success the deadline moves to this call's start + TTL − margin.
    pub async fn renew<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let mut cmd = LEASE.call(&[&self.keys.lease, &self.keys.fence]);
        cmd.arg("renew")
            .arg(&self.owner)
            .arg(self.ttl.as_millis().max(1) as u64);
        let v = scripts::run_one(conn, cmd)
            .await
            .map_err(|source| LeaseError::Redis {
                doing: "renewing",
                name: self.token.name.clone(),
                source,
            })?;
        match ints(&v).as_deref() {
            Some([1, token, _]) if *token == self.token.value => {
                let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
                // Never move the deadline back: a late reply to an earlier renewal is older news.
                *d = (*d).max(started + self.ttl.saturating_sub(margin(self.ttl)));
                Ok(true)
            }
            Some([1, _, _]) | Some([0, _, _]) => Ok(false),
            _ => Err(LeaseError::Protocol(format!("{v:?}"))),
        }
    }

    /// Give the lease up (owner check, DEL) so a successor can take it at once. Returns whether
    /// this owner still held it.
    pub async fn release<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<bool, LeaseError> {
        let mut cmd = LEASE.call(&[&self.keys.lease, &self.keys.fence]);
        cmd.arg("release").arg(&self.owner);
        let v = scripts::run_one(conn, cmd)
            .await
            .map_err(|source| LeaseError::Redis {
                doing: "releasing",
                name: self.token.name.clone(),
                source,
            })?;
        match ints(&v).as_deref() {
            Some([n]) => Ok(*n == 1),
            _ => Err(LeaseError::Protocol(format!("{v:?}"))),
        }
    }
}

/// Begin a leader transaction: its first statement moves the fence to this token. On
/// [`FenceError::Rejected`] the transaction is already rolled back and the caller must step
/// down. The returned transaction holds the fence row's lock until it ends, so two leaders'
/// transactions never interleave.
///
/// There is deliberately no deadline check here: callers check [`Lease::is_valid`] before they
/// start a unit of work (a tick pass, a fan-out batch), and a pause can land anywhere after that
/// check anyway. Whether a write lands is the fence's decision alone.
pub async fn fenced(
    pg: &PgPool,
    lease: &Lease,
) -> Result<Transaction<'static, Postgres>, FenceError> {
    let token = &lease.token;
    let mut tx = pg.begin().await.map_err(|source| StoreError::Query {
        doing: "beginning a fenced transaction",
        source,
    })?;
    // Half the TTL: a successor wins the lease no sooner than one TTL after this leader froze.
    let idle = (lease.ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
    store::fence::limit_idle(&mut tx, idle.as_millis() as u64).await?;
    if store::fence::advance(&mut tx, &token.name, token.value, &lease.owner).await? {
        Ok(tx)
    } else {
        drop(tx);
        METRICS.fenced_rejected.inc();
        Err(FenceError::Rejected {
            name: token.name.clone(),
            token: token.value,
        })
    }
}
