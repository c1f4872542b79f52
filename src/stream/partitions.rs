//! Producers and workers must agree on the partition count: a producer with a larger count
//! writes to partitions no worker reads, and those jobs wait forever. The first producer or
//! worker to start under a prefix records its count at `<prefix>:partitions`; every later one
//! compares and refuses to run on a mismatch. One round trip, once per process.
//!
//! Changing the count is a deliberate act: drain every lane and delayed set, stop producers
//! and workers, then `DEL <prefix>:partitions` and start them with the new count.

use super::Keys;
use redis::aio::ConnectionLike;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(
        "this process uses {ours} partition(s) but the deployment under prefix {prefix:?} \
         records {recorded} (at {key}); set MAILFLEET_PARTITIONS={recorded}, or drain and \
         DEL {key} to change the count"
    )]
    Mismatch {
        prefix: String,
        key: String,
        ours: u16,
        recorded: String,
    },
    #[error("Redis failed while checking the partition count: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Record `keys`' partition count if none is recorded, else check that it matches.
pub async fn agree<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> Result<(), PartitionError> {
    let key = keys.partition_count();
    let (recorded,): (Option<String>,) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(keys.partitions())
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await?;
    match recorded {
        Some(r) if r == keys.partitions().to_string() => Ok(()),
        Some(r) => Err(PartitionError::Mismatch {
            prefix: keys.prefix().to_owned(),
            key,
            ours: keys.partitions(),
            recorded: r,
        }),
        // Deleted between the two commands (a deliberate reset): nothing to disagree with.
        None => Ok(()),
    }
}
