//! The Redis key layout, every key mailfleet uses, built here and nowhere else. Job keys are
//! `<prefix>:{<partition>}:<name>`; the braces make the partition number the Redis Cluster
//! hash tag, so a partition's streams, delayed set, dead-letter stream and dedup markers share
//! one slot and one Lua script may touch them all. A lease's keys share the lease's name as
//! their tag ([`LeaseKeys`]), a provider's rate-limit keys the provider's ([`RateLimitKeys`]).
//! The deployment-wide keys (pauses, workers, breakers, the partition count) are single keys
//! that no script combines with another.

use crate::domain::Lane;
use std::sync::Arc;

/// The stream an entry lives on: a lane's shared stream, or (bulk only) one tenant's own
/// stream, which the fair read walks (`lua/read.lua`, docs/fairness.md).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub partition: u16,
    pub lane: Lane,
    /// The tenant whose bulk stream it is; `None` for the lane's shared stream.
    pub tenant: Option<Arc<str>>,
}

impl Source {
    pub fn shared(partition: u16, lane: Lane) -> Self {
        Source {
            partition,
            lane,
            tenant: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u16,
}

impl Keys {
    /// `partitions` is clamped to at least 1.
    pub fn new(prefix: impl Into<String>, partitions: u16) -> Self {
        Keys {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn partitions(&self) -> u16 {
        self.partitions
    }
    pub fn lane(&self, p: u16, lane: Lane) -> String {
        format!("{}:{{{p}}}:{}", self.prefix, lane.as_str())
    }
    /// The stream `s` names: the lane's shared stream or a tenant's bulk stream.
    pub fn source(&self, s: &Source) -> String {
        match &s.tenant {
            Some(t) => self.tenant_stream(s.partition, t),
            None => self.lane(s.partition, s.lane),
        }
    }
    /// A tenant's own bulk stream, `<prefix>:{p}:bulk:t:<tenant>`: it exists (with the consumer
    /// group) while the tenant has email waiting or in flight; lua/settle.lua deletes it once
    /// empty.
    pub fn tenant_stream(&self, p: u16, tenant: &str) -> String {
        format!("{}{tenant}", self.tenant_stream_prefix(p))
    }
    /// What every tenant stream's key of partition `p` starts with (the scripts build the keys
    /// of the ring's members from it).
    pub fn tenant_stream_prefix(&self, p: u16) -> String {
        format!("{}:{{{p}}}:bulk:t:", self.prefix)
    }
    /// The ring of partition `p`'s bulk streams with work (a sorted set: tenant → virtual time,
    /// `''` for the shared bulk stream); the fair read serves the lowest first.
    pub fn bulk_ring(&self, p: u16) -> String {
        format!("{}:{{{p}}}:bulk:ring", self.prefix)
    }
    /// Tenants of partition `p` whose streams may hold entries delivered and not yet acked (a
    /// sorted set: tenant → a time at or before the oldest such delivery, unix ms by Redis'
    /// clock), so reclaim looks only at streams that can hold a crashed consumer's entries.
    pub fn bulk_held(&self, p: u16) -> String {
        format!("{}:{{{p}}}:bulk:held", self.prefix)
    }
    /// The bell of partition `p`'s ring (a stream with the consumer group): a tenant joining
    /// the ring rings it, so a bulk reader blocked on the shared stream wakes for the new
    /// tenant stream it could not block on.
    pub fn bulk_bell(&self, p: u16) -> String {
        format!("{}:{{{p}}}:bulk:bell", self.prefix)
    }
    /// The tenants' weights in partition `p`'s fair read (a hash: tenant → weight; absent = 1).
    pub fn bulk_weights(&self, p: u16) -> String {
        format!("{}:{{{p}}}:bulk:weights", self.prefix)
    }
    /// The delayed set of bulk entries (and of any entry an older producer scheduled).
    pub fn delayed(&self, p: u16) -> String {
        format!("{}:{{{p}}}:delayed", self.prefix)
    }
    /// The delayed set of tx entries: promoted before the other, so a tx retry never waits
    /// behind a campaign's due entries.
    pub fn delayed_tx(&self, p: u16) -> String {
        format!("{}:{{{p}}}:delayed:tx", self.prefix)
    }
    /// The delayed set entries of `lane` wait in.
    pub fn delayed_of(&self, p: u16, lane: Lane) -> String {
        match lane {
            Lane::Tx => self.delayed_tx(p),
            Lane::Bulk => self.delayed(p),
        }
    }
    pub fn dead(&self, p: u16) -> String {
        format!("{}:{{{p}}}:dead", self.prefix)
    }
    /// The partition count producers and workers agree on (see `stream::partitions`).
    pub fn partition_count(&self) -> String {
        format!("{}:partitions", self.prefix)
    }
    /// The pauses in force (a hash of `<scope>:<name>` → since, unix ms; `stream::pause`).
    pub fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }
    /// The workers alive (a sorted set scored by their last report, unix ms).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// Each worker's breaker states (a hash of `<provider>\t<consumer>` → state).
    pub fn breakers(&self) -> String {
        format!("{}:breakers", self.prefix)
    }
    /// What each worker says of itself (a hash of consumer → `version\tstarted ms\tin flight`).
    pub fn worker_info(&self) -> String {
        format!("{}:worker_info", self.prefix)
    }
    /// The idempotency marker of a job with no tenant.
    pub fn dedup(&self, p: u16, idem: &str) -> String {
        format!("{}:{{{p}}}:dedup:{idem}", self.prefix)
    }
    /// A job's idempotency marker: a tenant's keys have a namespace of their own
    /// (`tdedup:<tenant>:<key>`; a tenant name holds no `:`), so one tenant's key never makes
    /// another tenant's job a duplicate.
    pub fn dedup_for(&self, p: u16, tenant: Option<&str>, idem: &str) -> String {
        match tenant {
            Some(t) => format!("{}:{{{p}}}:tdedup:{t}:{idem}", self.prefix),
            None => self.dedup(p, idem),
        }
    }
    /// Which partition a job lives in: FNV-1a (32-bit) of its idempotency key, or of its id when
    /// it has none, modulo the partition count. Documented in docs/stream-format.md so producers in
    /// other languages place jobs identically.
    pub fn partition_for(&self, routing_key: &str) -> u16 {
        (fnv1a32(routing_key.as_bytes()) % u32::from(self.partitions)) as u16
    }
}

/// The Redis keys of a lease: `<prefix>:lease:{<name>}` and its fence counter, which share a
/// hash tag so the script touches one slot.
#[derive(Debug, Clone)]
pub struct LeaseKeys {
    pub lease: String,
    pub fence: String,
}

impl LeaseKeys {
    pub fn new(prefix: &str, name: &str) -> Self {
        LeaseKeys {
            lease: format!("{prefix}:lease:{{{name}}}"),
            fence: format!("{prefix}:lease:{{{name}}}:fence"),
        }
    }
}

/// The keys of one provider's cluster-wide window (`lua/ratelimit.lua`), all tagged with the
/// provider's name: its log, grant counter, back-off flag, and a tenant's own log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitKeys {
    pub window: String,
    pub seq: String,
    pub block: String,
    /// Set for two windows by every tx ask: while it exists, bulk asks leave headroom.
    pub tx_demand: String,
    /// Tx permits waiting, per asker: bulk asks leave them room.
    pub tx_waiting: String,
    pub tenant: Option<String>,
}

impl RateLimitKeys {
    pub fn new(prefix: &str, provider: &str, tenant: Option<&str>) -> Self {
        let base = format!("{prefix}:rl:{{{provider}}}");
        RateLimitKeys {
            window: format!("{base}:w"),
            seq: format!("{base}:seq"),
            block: format!("{base}:block"),
            tx_demand: format!("{base}:txd"),
            tx_waiting: format!("{base}:txw"),
            tenant: tenant.map(|t| format!("{base}:t:{t}")),
        }
    }
}

pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_dedup_namespace_apart_from_jobs_without_one() {
        let k = Keys::new("mf", 1);
        let keys = [
            k.dedup_for(0, None, "order-42"),
            k.dedup_for(0, Some("acme"), "order-42"),
            k.dedup_for(0, Some("globex"), "order-42"),
            // A key with no tenant that spells out another tenant's marker stays apart.
            k.dedup_for(0, None, "t:acme:order-42"),
            k.dedup_for(0, None, "acme:order-42"),
        ];
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        assert_eq!(k.dedup_for(0, None, "order-42"), k.dedup(0, "order-42"));
    }

    #[test]
    fn keys_of_one_partition_share_a_hash_tag() {
        let k = Keys::new("mf", 4);
        let p = k.partition_for("order-42");
        for key in [
            k.lane(p, Lane::Tx),
            k.lane(p, Lane::Bulk),
            k.delayed(p),
            k.delayed_tx(p),
            k.dead(p),
            k.dedup(p, "order-42"),
            k.dedup_for(p, Some("acme"), "order-42"),
        ] {
            assert!(key.starts_with(&format!("mf:{{{p}}}:")), "{key}");
        }
    }

    #[test]
    fn partitioning_is_the_documented_fnv1a() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
        let k = Keys::new("mf", 1);
        assert_eq!(k.partition_for("anything"), 0);
    }
}
