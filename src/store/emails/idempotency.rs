//! The idempotency backstop in Postgres (migrations/0008_idempotency.sql): at claim, each job
//! with an idempotency key takes its (tenant, key) for the dedup window; a job that finds it
//! held by another job is that job's duplicate.

use crate::store::{StoreError, q};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Take `(tenant or '', key, job id)` for `window`; returns each job that is a duplicate,
/// mapped to the job that holds its key. A key is free when no job holds it, its holder's
/// window has passed, or this job holds it already (a retry or a reclaim of the same job).
/// Within `jobs`, the smallest id (UUIDv7: the first made) of a repeated key is its holder.
///
/// One statement. `ON CONFLICT DO UPDATE` always updates (to the same holder when the key is
/// taken), so it locks the row and its `RETURNING` names the holder as committed, even when a
/// racing claim of the duplicate inserted it a moment earlier.
pub async fn hold(
    pool: &PgPool,
    jobs: &[(String, String, Uuid)],
    window: Duration,
) -> Result<HashMap<Uuid, Uuid>, StoreError> {
    let mut dups = HashMap::new();
    let mut first: HashMap<(&str, &str), Uuid> = HashMap::new();
    for (t, k, id) in jobs {
        let e = first.entry((t.as_str(), k.as_str())).or_insert(*id);
        if *id < *e {
            dups.insert(*e, *id);
            *e = *id;
        } else if *id != *e {
            dups.insert(*id, *e);
        }
    }
    if first.is_empty() {
        return Ok(dups);
    }
    // Sorted, so two batches that share keys lock them in the same order.
    let mut want: Vec<(&str, &str, Uuid)> = first.iter().map(|(&(t, k), &id)| (t, k, id)).collect();
    want.sort_unstable();
    let tenants: Vec<&str> = want.iter().map(|w| w.0).collect();
    let keys: Vec<&str> = want.iter().map(|w| w.1).collect();
    let ids: Vec<Uuid> = want.iter().map(|w| w.2).collect();
    let held: Vec<(String, String, Uuid)> = sqlx::query_as(
        "INSERT INTO idempotency_keys AS k (tenant, key, job_id, expires_at)
         SELECT t, key, id, now() + make_interval(secs => $4)
           FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS w(t, key, id)
         ON CONFLICT (tenant, key) DO UPDATE SET
             job_id = CASE WHEN k.expires_at < now() OR k.job_id = EXCLUDED.job_id
                           THEN EXCLUDED.job_id ELSE k.job_id END,
             expires_at = CASE WHEN k.expires_at < now() OR k.job_id = EXCLUDED.job_id
                               THEN EXCLUDED.expires_at ELSE k.expires_at END
         RETURNING k.tenant, k.key, k.job_id",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(&ids)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(q("holding idempotency keys"))?;
    let holder: HashMap<(&str, &str), Uuid> = held
        .iter()
        .map(|(t, k, id)| ((t.as_str(), k.as_str()), *id))
        .collect();
    for (t, k, id) in &want {
        if let Some(h) = holder.get(&(*t, *k))
            && h != id
        {
            dups.insert(*id, *h);
            // The batch's own repeats of this key are duplicates of the holder too.
            for v in dups.values_mut() {
                if v == id {
                    *v = *h;
                }
            }
        }
    }
    Ok(dups)
}
