//! Provider events from webhooks, applied once each: a delivery marks a sent job `delivered`; a
//! hard bounce or a complaint marks it `bounced` / `complained` and suppresses the recipient
//! for every tenant. One transaction per request; an event seen before changes nothing.
//!
//! A provider's webhook can outrun our own recorder: an event for a job still `sending` (or
//! not yet claimed) is kept `pending` with its job id, and [`apply_pending`], run by every
//! worker's reconciler pass, applies it once the row is `sent`. Pending events whose job ended
//! in a state no event changes (`failed`, `dead`, `suppressed`), or that wait longer than
//! [`PENDING_FOR`], are let go.

use super::{StoreError, q};
use crate::domain::Status;
use sqlx::PgPool;
use uuid::Uuid;

/// What an event means for mailfleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Delivered,
    /// A permanent bounce: the address does not exist or refuses mail.
    HardBounce,
    Complaint,
    /// Anything else (opens, clicks, soft bounces, deferrals): recorded, no change.
    Other,
}

/// How long an event waits for its job to be recorded before it is let go.
pub const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Kind {
    /// The status an event sets, and the statuses it applies to (None: it changes no job).
    fn transition(self) -> Option<(Status, &'static [Status])> {
        match self {
            Kind::Delivered => Some((Status::Delivered, &[Status::Sent])),
            Kind::HardBounce => Some((Status::Bounced, &[Status::Sent, Status::Delivered])),
            Kind::Complaint => Some((Status::Complained, &[Status::Sent, Status::Delivered])),
            Kind::Other => None,
        }
    }

    /// The suppression reason an event adds for its recipient.
    fn suppresses(self) -> Option<&'static str> {
        match self {
            Kind::HardBounce => Some("bounce"),
            Kind::Complaint => Some("complaint"),
            Kind::Delivered | Kind::Other => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delivered => "delivered",
            Kind::HardBounce => "bounce",
            Kind::Complaint => "complaint",
            Kind::Other => "other",
        }
    }
}

/// One provider event, normalized. Its Debug never shows the recipient.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    pub provider: &'static str,
    /// The provider's own event id (deduplication key).
    pub event_id: String,
    pub kind: Kind,
    pub job_id: Option<Uuid>,
    pub recipient: Option<String>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("provider", &self.provider)
            .field("event_id", &self.event_id)
            .field("kind", &self.kind)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

/// Give back a single-use token taken by [`apply_once`] whose request could not be completed
/// (so the vendor's retry is not refused as a replay).
pub async fn release_token(pool: &PgPool, provider: &str, token: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM webhook_events WHERE provider = $1 AND event_id = $2")
        .bind(format!("{provider}:token"))
        .bind(token)
        .execute(pool)
        .await
        .map_err(q("releasing a webhook token"))?;
    Ok(())
}

/// Apply `events` once each, in one transaction; returns how many were new.
pub async fn apply(pool: &PgPool, events: &[Event]) -> Result<usize, StoreError> {
    Ok(apply_once(pool, None, events).await?.unwrap_or(0))
}

/// [`apply`], after taking the request's single-use token `(provider, token)` (Mailgun's token,
/// SNS's MessageId) in the same transaction: `None` when the token was used before (a replay;
/// nothing is applied). A failure takes nothing, so the vendor's retry is not a replay.
pub async fn apply_once(
    pool: &PgPool,
    token: Option<(&str, &str)>,
    events: &[Event],
) -> Result<Option<usize>, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(q("beginning a webhook transaction"))?;
    if let Some((provider, token)) = token {
        let fresh = sqlx::query(
            "INSERT INTO webhook_events (provider, event_id, kind) VALUES ($1, $2, 'token')
             ON CONFLICT DO NOTHING",
        )
        .bind(format!("{provider}:token"))
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a webhook token"))?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(None);
        }
    }
    let mut applied = 0;
    for e in events {
        let new = sqlx::query(
            "INSERT INTO webhook_events (provider, event_id, kind, job_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(e.provider)
        .bind(&e.event_id)
        .bind(e.kind.as_str())
        .bind(e.job_id)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a webhook event"))?
        .rows_affected()
            == 1;
        if !new {
            continue;
        }
        applied += 1;
        if let (Some(id), Some((status, from))) = (e.job_id, e.kind.transition()) {
            // Applied now, or, while the job has not reached `sent` yet, kept pending.
            sqlx::query(
                "WITH upd AS (
                     UPDATE emails SET status = $2, updated_at = now()
                      WHERE id = $1 AND status = ANY($3) RETURNING id)
                 UPDATE webhook_events SET pending = true
                  WHERE provider = $4 AND event_id = $5 AND NOT EXISTS (SELECT 1 FROM upd)
                    AND NOT EXISTS (SELECT 1 FROM emails WHERE id = $1
                                     AND status = ANY($6) AND status <> ALL($3))",
            )
            .bind(id)
            .bind(status)
            .bind(from)
            .bind(e.provider)
            .bind(&e.event_id)
            .bind(&Status::FINAL[..])
            .execute(&mut *tx)
            .await
            .map_err(q("updating a job from a webhook event"))?;
        }
        if let (Some(reason), Some(addr)) = (e.kind.suppresses(), &e.recipient) {
            sqlx::query(
                "INSERT INTO suppressions (address, tenant, reason, note)
                 VALUES (lower($1), '', $2, $3)
                 ON CONFLICT (address, tenant) DO UPDATE SET reason = EXCLUDED.reason,
                        note = EXCLUDED.note, expires_at = NULL, created_at = now()",
            )
            .bind(addr)
            .bind(reason)
            .bind(format!("{} webhook", e.provider))
            .execute(&mut *tx)
            .await
            .map_err(q("suppressing from a webhook event"))?;
        }
    }
    tx.commit().await.map_err(q("committing webhook events"))?;
    Ok(Some(applied))
}

/// Apply the pending events whose job has meanwhile reached a status they apply to, in the
/// order the kinds happen (delivery, then bounce or complaint), and let go of the ones that
/// can no longer apply. Returns how many events were applied. Cheap when nothing is pending
/// (a partial index holds only pending events).
pub async fn apply_pending(pool: &PgPool) -> Result<u64, StoreError> {
    let mut applied = 0;
    for kind in [Kind::Delivered, Kind::HardBounce, Kind::Complaint] {
        let Some((status, from)) = kind.transition() else {
            continue;
        };
        let r = sqlx::query(
            "WITH upd AS (
                 UPDATE emails e SET status = $2, updated_at = now()
                   FROM (SELECT DISTINCT job_id FROM webhook_events
                          WHERE pending AND kind = $1) w
                  WHERE e.id = w.job_id AND e.status = ANY($3)
                 RETURNING e.id)
             UPDATE webhook_events SET pending = false
              WHERE pending AND kind = $1 AND job_id IN (SELECT id FROM upd)",
        )
        .bind(kind.as_str())
        .bind(status)
        .bind(from)
        .execute(pool)
        .await
        .map_err(q("applying pending webhook events"))?;
        applied += r.rows_affected();
        // Let go of the events of this kind that can no longer apply: their job ended in a
        // status this kind does not change, or they waited too long.
        sqlx::query(
            "UPDATE webhook_events w SET pending = false
              WHERE pending AND kind = $1
                AND (received_at < now() - make_interval(secs => $3)
                     OR NOT EXISTS (SELECT 1 FROM emails e WHERE e.id = w.job_id
                                     AND (e.status = ANY($2) OR e.status = ANY($4))))",
        )
        .bind(kind.as_str())
        .bind(from)
        .bind(PENDING_FOR.as_secs_f64())
        .bind(&Status::OPEN[..])
        .execute(pool)
        .await
        .map_err(q("letting go of stale webhook events"))?;
    }
    Ok(applied)
}

/// A provider event recorded for a job, as `mailfleet email show` lists it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub provider: String,
    pub event_id: String,
    pub kind: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// The events received for job `id`, oldest first.
pub async fn events_of(pool: &PgPool, id: uuid::Uuid) -> Result<Vec<EventRow>, StoreError> {
    sqlx::query_as(
        "SELECT provider, event_id, kind, received_at FROM webhook_events
          WHERE job_id = $1 ORDER BY received_at",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(q("listing an email's provider events"))
}
