//! Provider events from webhooks, applied once each: a delivery marks a sent job `delivered`; a
//! hard bounce or a complaint marks it `bounced` / `complained` and suppresses the recipient
//! for every tenant. One transaction per request; an event seen before changes nothing.

use super::{StoreError, q};
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

impl Kind {
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
            "INSERT INTO webhook_events (provider, event_id, kind) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(e.provider)
        .bind(&e.event_id)
        .bind(e.kind.as_str())
        .execute(&mut *tx)
        .await
        .map_err(q("recording a webhook event"))?
        .rows_affected()
            == 1;
        if !new {
            continue;
        }
        applied += 1;
        let (status, from, reason) = match e.kind {
            Kind::Delivered => ("delivered", &["sent"][..], None),
            Kind::HardBounce => ("bounced", &["sent", "delivered"][..], Some("bounce")),
            Kind::Complaint => ("complained", &["sent", "delivered"][..], Some("complaint")),
            Kind::Other => continue,
        };
        if let Some(id) = e.job_id {
            sqlx::query(
                "UPDATE emails SET status = $2, updated_at = now()
                  WHERE id = $1 AND status = ANY($3)",
            )
            .bind(id)
            .bind(status)
            .bind(from)
            .execute(&mut *tx)
            .await
            .map_err(q("updating a job from a webhook event"))?;
        }
        if let (Some(reason), Some(addr)) = (reason, &e.recipient) {
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
