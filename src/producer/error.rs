//! What can go wrong with an enqueue, and what a refused batch left behind.

use super::agreement::PartitionMismatch;
use crate::domain::ValidationErrors;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Redis is at its `maxmemory` and refused the enqueue (`noeviction`): the batch was
    /// taken back, except `sent_anyway` jobs a worker had already read (they will be sent).
    #[error(
        "the queue is full (Redis is at maxmemory); nothing of the batch was enqueued{}",
        taken_back_except(*sent_anyway)
    )]
    QueueFull { sent_anyway: usize },
    /// Durability `replicated`: the masters written to did not confirm the batch on enough
    /// replicas in time. The batch was taken back, except `sent_anyway` jobs already read.
    #[error(
        "Redis confirmed the enqueue on {confirmed} replica(s), not the {wanted} asked for, within {wait_ms} ms; nothing of the batch was enqueued{}",
        taken_back_except(*sent_anyway)
    )]
    NotReplicated {
        wanted: u32,
        confirmed: i64,
        wait_ms: u64,
        sent_anyway: usize,
    },
    /// Durability `ledger`: the batch's `queued` rows could not be written to Postgres. The
    /// batch was taken back from Redis, except `sent_anyway` jobs already read.
    #[error(
        "could not record the batch in Postgres ({source}); nothing of the batch was enqueued{}",
        taken_back_except(*sent_anyway)
    )]
    Ledger {
        source: StoreError,
        sent_anyway: usize,
    },
    #[error("Redis failed while {doing}: {source}")]
    Redis {
        doing: &'static str,
        source: redis::RedisError,
    },
    #[error("no Redis connection available: {0}")]
    Pool(#[from] crate::stream::PoolError),
    #[error("Redis answered enqueue with something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Partitions(PartitionMismatch),
    /// The ledger's database settings are unusable (a malformed URL).
    #[error("the ledger's Postgres settings: {0}")]
    LedgerSetup(StoreError),
}

/// The tail of a refused batch's message: the jobs a worker had read before the take-back.
fn taken_back_except(sent_anyway: usize) -> String {
    if sent_anyway > 0 {
        format!(" except {sent_anyway} job(s) a worker had already read (they will be sent)")
    } else {
        String::new()
    }
}

impl ProducerError {
    /// The jobs of a refused batch that a worker had already read: they will be sent.
    pub fn sent_anyway(&self) -> usize {
        match self {
            ProducerError::QueueFull { sent_anyway }
            | ProducerError::NotReplicated { sent_anyway, .. }
            | ProducerError::Ledger { sent_anyway, .. } => *sent_anyway,
            _ => 0,
        }
    }
}

/// The error of a batch a Redis call failed, after its take-back.
pub(super) fn refused(source: redis::RedisError, sent_anyway: usize) -> ProducerError {
    if source.code() == Some("OOM") {
        ProducerError::QueueFull { sent_anyway }
    } else {
        ProducerError::Redis {
            doing: "enqueueing",
            source,
        }
    }
}
