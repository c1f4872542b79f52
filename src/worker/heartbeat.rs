//! Long sends keep their entries: every quarter of the visibility timeout, the worker refreshes
//! what it is still working on, in Redis (the entries' idle time, lua/touch.lua) and in Postgres
//! (the claims' `claimed_at`), so neither another worker's reclaim nor its claim treats a slow
//! but live send as abandoned. Entries are registered when claimed and deregistered when their
//! outcome is recorded. The two refreshes run as separate beats, so a stalled Redis never
//! delays the Postgres refresh that fences a live claim.

use super::Shared;
use super::recorder::EntryRef;
use crate::metrics::METRICS;
use crate::store::emails;
use crate::stream::{Source, consumer};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type EntriesByStream = BTreeMap<Source, Vec<String>>;

/// Claims of this worker whose outcome is not recorded yet: (job id, claim token) → entry.
/// Keyed by the claim, not the job: the same worker can hold an old and a new claim of one job
/// (a reclaimed entry, a re-enqueued job), and the old claim's stale outcome must not end the
/// heartbeat of the new one.
#[derive(Default)]
pub struct Live(std::sync::Mutex<HashMap<(Uuid, Uuid), EntryRef>>);

impl Live {
    pub fn add(&self, token: Uuid, jobs: impl IntoIterator<Item = (Uuid, EntryRef)>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (id, e) in jobs {
            m.insert((id, token), e);
        }
    }
    /// Forget these (job id, claim token) claims: their outcome is recorded (or rejected).
    pub fn remove(&self, claims: impl IntoIterator<Item = (Uuid, Uuid)>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for c in claims {
            m.remove(&c);
        }
    }
    /// The live claims as (job id, token) pairs.
    fn claims(&self) -> Vec<(Uuid, Uuid)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.keys().copied().collect()
    }
    /// The live claims' entries, grouped by stream.
    fn entries(&self) -> EntriesByStream {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries: EntriesByStream = BTreeMap::new();
        for e in m.values() {
            entries
                .entry(e.source())
                .or_default()
                .push(e.entry_id.clone());
        }
        entries
    }
}

/// The heartbeat period for a visibility timeout: a quarter of it, so three beats can fail
/// before a live send looks abandoned.
pub fn period(visibility_timeout_ms: u64) -> Duration {
    Duration::from_millis((visibility_timeout_ms / 4).max(50))
}

/// Two independent beats: the Postgres refresh is what keeps another worker's claim from
/// taking a live send over, so it never waits on Redis (a touch to a dead or blackholed Redis
/// node can hang for the whole command timeout, longer than the visibility timeout), and the
/// Redis touch never waits on Postgres.
pub(super) async fn run(shared: Arc<Shared>, token: CancellationToken) {
    let every = period(shared.settings.visibility_timeout_ms);
    tokio::join!(
        beat_every(every, &token, || refresh_claims(&shared)),
        beat_every(every, &token, || touch_entries(&shared)),
    );
}

async fn beat_every<F, Fut>(every: Duration, token: &CancellationToken, mut beat: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = beat() => {}
        }
    }
}

async fn touch_entries(shared: &Shared) {
    let entries = shared.live.entries();
    if entries.is_empty() {
        return;
    }
    let redis = match shared.deps.redis.get().await {
        Ok(mut conn) => consumer::touch(
            &mut *conn,
            &shared.deps.keys,
            &shared.settings.consumer,
            &entries,
        )
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = redis {
        METRICS.redis_errors.with_label_values(&["heartbeat"]).inc();
        tracing::warn!(error.message = %e, streams = entries.len(), "heartbeat: refreshing entries failed");
    }
}

async fn refresh_claims(shared: &Shared) {
    let claims = shared.live.claims();
    if claims.is_empty() {
        return;
    }
    if let Err(e) = emails::touch_claims(&shared.deps.pg, &claims).await {
        METRICS.store_errors.with_label_values(&["heartbeat"]).inc();
        tracing::warn!(error.message = %e, claims = claims.len(), "heartbeat: refreshing claims failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Lane;

    fn entry(id: &str) -> EntryRef {
        EntryRef {
            partition: 0,
            lane: Lane::Bulk,
            stream_tenant: None,
            entry_id: id.into(),
        }
    }

    #[test]
    fn a_stale_claims_outcome_does_not_end_the_heartbeat_of_a_newer_claim_of_the_job() {
        let live = Live::default();
        let job = Uuid::now_v7();
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        live.add(old, [(job, entry("1-0"))]);
        live.add(new, [(job, entry("2-0"))]);
        // The old claim's outcome arrives (and is rejected as stale): only it is forgotten.
        live.remove([(job, old)]);
        assert_eq!(live.claims(), vec![(job, new)]);
        assert_eq!(
            live.entries()[&Source::shared(0, Lane::Bulk)],
            vec!["2-0".to_owned()]
        );
        live.remove([(job, new)]);
        assert!(live.claims().is_empty() && live.entries().is_empty());
    }
}
