//! Producers and workers must agree on the partition count (`stream::partitions`): the check
//! a producer runs in the background from its first send.

use crate::stream::Keys;
use std::time::Duration;
use tokio::sync::watch;

/// A running partition-count check: what it found (`None` until Redis answered) and when it
/// began.
pub(super) type Check = (
    watch::Receiver<Option<Result<(), PartitionMismatch>>>,
    tokio::time::Instant,
);

/// How long sends wait for the first answer of the partition-count check; after that they go
/// on while it keeps retrying, so a stalled Redis node never holds up an enqueue for long.
pub(super) const CHECK_WAIT: Duration = Duration::from_secs(1);

/// The deployment records another partition count than this producer's: its jobs would land
/// where no worker reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMismatch(String);

impl std::fmt::Display for PartitionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The partition-count check behind [`Producer::send_prepared`]: until Redis answers (every
/// second), or until every clone of the producer is gone.
pub(super) async fn check_partitions(
    pool: crate::stream::Pool,
    keys: Keys,
    tx: watch::Sender<Option<Result<(), PartitionMismatch>>>,
) {
    use crate::stream::partitions::{PartitionError, agree};
    loop {
        let found = match pool.get().await {
            Ok(mut conn) => match agree(&mut *conn, &keys).await {
                Ok(()) => Some(Ok(())),
                Err(e @ PartitionError::Mismatch { .. }) => {
                    Some(Err(PartitionMismatch(e.to_string())))
                }
                Err(PartitionError::Redis(e)) => {
                    tracing::debug!(error.message = %e, "partition count not checked yet; retrying");
                    None
                }
            },
            Err(_) => None,
        };
        if found.is_some() {
            let _ = tx.send(found);
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
