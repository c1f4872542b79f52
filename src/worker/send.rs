//! One claimed job's send: pauses, render, the route walk (breaker, caps, permit, provider,
//! failover only after an answer that proves the provider did not take it), and the job's fate
//! from [`super::fate`]. Returns the [`Item`] the recorder records; never acks.

use super::Shared;
use super::fate::{self, Fate, backoff};
use super::recorder::{After, EntryRef, Item};
use crate::domain::Status;
use crate::metrics::{METRICS, timed};
use crate::provider::batch::PartResult;
use crate::provider::breaker::Admit;
use crate::provider::{ErrorClass, Message, SendError};
use crate::store::emails::{Outcome, Tried};
use crate::stream::consumer::{DeadLetter, dead_reason};
use crate::stream::{Job, wire};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Send `job` (attempt `attempt` under claim `token`) and say what became of it.
pub(super) async fn one(
    shared: &Shared,
    job: &Job,
    attempt: i32,
    token: Uuid,
    templates: &HashMap<String, Arc<crate::store::templates::Template>>,
) -> Item {
    let s = &shared.settings;
    let providers = &shared.deps.providers;
    let started = Utc::now();
    let entry = EntryRef::of_job(job);
    let outcome = |status: Status,
                   provider: Option<&str>,
                   error: Option<String>,
                   http: Option<u16>,
                   msg: Option<String>| Outcome {
        id: job.id.as_uuid(),
        token,
        status,
        attempt,
        provider: provider.map(str::to_owned),
        message_id: msg,
        error,
        http_status: http.map(i32::from),
        started_at: started,
        finished_at: Utc::now(),
        retry_in_ms: None,
        attempt_outcome: None,
        tried: Vec::new(),
    };
    let finish = |o: Outcome, after: After| Item::Outcome {
        outcome: o,
        entry: entry.clone(),
        after,
        enqueued_at_ms: job.enqueued_at_ms,
    };
    // The delay, not a due time: Redis (`retry.lua`) and Postgres (`record`) each add it to
    // their own clock, so a worker whose clock is off cannot make retries due early or late.
    let retry = |mut o: Outcome, attempt: i32, retry_after: Option<Duration>| {
        let delay = backoff(attempt, s.retry_base_ms, s.retry_max_ms, retry_after);
        let delay_ms = delay.as_millis() as i64;
        o.retry_in_ms = Some(delay_ms);
        finish(
            o,
            After::Retry {
                delay_ms,
                member: wire::delayed_member(job),
            },
        )
    };

    // Put the job back without using an attempt (the record statement gives it back).
    let defer = |why: &str, wait: Duration| {
        METRICS.deferred.inc();
        let mut o = outcome(
            Status::Retrying,
            None,
            Some(format!("deferred: {why}")),
            None,
            None,
        );
        o.attempt_outcome = Some("deferred");
        retry(o, 1, Some(wait))
    };

    // A paused lane or tenant: deferred for a little longer the longer the pause has lasted
    // (at most 30 s), so a long pause does not cycle its backlog every second and a resume is
    // picked up within that. Checked before rendering: a paused job costs no render.
    let tenant = job.email.tenant.as_deref();
    let paused_since = {
        let p = shared.pauses();
        if p.lane(job.lane) {
            Some(Utc::now().timestamp_millis())
        } else {
            p.tenant(tenant)
        }
    };
    if let Some(since) = paused_since {
        let lasted = (Utc::now().timestamp_millis() - since).clamp(0, 30_000) as u64;
        let wait = Duration::from_millis(1000 + rand::random_range(0..=lasted));
        return defer("its lane or tenant is paused", wait);
    }

    let route = providers.route(job.lane, tenant, job.email.provider.as_deref());
    let template = job
        .email
        .template_name()
        .and_then(|n| templates.get(n))
        .map(|t| t.as_ref());
    let rendered = match shared.renderer.render(&job.email, template) {
        Ok(r) => r,
        Err(e) => {
            // The reason only: the error's text may quote the template or a variable.
            tracing::warn!(job_id = %job.id, lane = %job.lane, reason = e.reason(),
                "rendering failed; the email is failed (the reason is in its row)");
            return finish(
                outcome(
                    Status::Failed,
                    None,
                    Some(format!("render: {e}")),
                    None,
                    None,
                ),
                After::Ack,
            );
        }
    };
    if route.is_empty() {
        return finish(
            outcome(
                Status::Failed,
                None,
                Some("no provider configured".into()),
                None,
                None,
            ),
            After::Ack,
        );
    }

    // Down the route: the next provider is tried only when the last one's answer proves it did
    // not take the email (transient, quota/auth); an ambiguous or permanent answer ends it.
    // Every provider tried before the last one gets its own attempt row (`tried`).
    let mut last: Option<Failed> = None;
    let mut tried: Vec<Tried> = Vec::new();
    let mut failed_over_from: Option<&str> = None;
    let mut try_started;
    let mut reopens: Option<Duration> = None;
    let mut down_for: Option<Duration> = None;
    for &i in &route {
        let slot = providers.slot(i);
        if shared.pauses().provider(slot.name()) {
            // Paused by an operator: skipped like an open breaker; looked at again in a second.
            let again = Duration::from_secs(1);
            reopens = Some(reopens.map_or(again, |r| r.min(again)));
            down_for = Some(Duration::ZERO);
            continue;
        }
        let now = std::time::Instant::now();
        let admitted = slot.breaker.admit(now);
        if let Admit::No(after) = admitted {
            reopens = Some(reopens.map_or(after, |r| r.min(after)));
            let down = slot.breaker.down_for(now);
            down_for = Some(down_for.map_or(down, |d: Duration| d.min(down)));
            continue;
        }
        // Wait for this worker's smoothing and caps first, so a permit is used as soon as it
        // is granted: a permit that waits lands outside the window it was counted in.
        // Every wait below serves a tx send before any bulk one (`crate::priority`).
        let lane = job.lane.as_str();
        let _cap = timed("provider_slot", lane, slot.ready(job.lane, tenant)).await;
        let _permit = timed(
            "send_slot",
            lane,
            shared.send_slots(job.lane).acquire_for(job.lane, tenant),
        )
        .await;
        if let Some(f) = last.take() {
            failed_over_from = Some(f.provider);
            tried.push(f.into_tried());
        }
        try_started = Utc::now();
        // A bulk send to a provider with a batch endpoint shares a request with the other
        // sends waiting for it (`provider::batch`); a batch refused for another email's sake
        // sends this one again, with a permit of its own, alone when the provider did not say
        // which email was at fault.
        let msg = Message {
            job_id: job.id,
            email: &job.email,
            rendered: &rendered,
        };
        let mut part = slot
            .batcher(job.lane)
            .and_then(|b| Some((b, b.dialect().part(&msg)?)));
        let result = loop {
            if let Some(limit) = &slot.limit
                && let Err(e) = timed(
                    "limiter",
                    lane,
                    shared.limiter.acquire(slot.name(), limit, tenant, job.lane),
                )
                .await
            {
                break Err(e);
            }
            let t0 = std::time::Instant::now();
            let mut r = match &part {
                Some((b, p)) => match b.send(p.clone()).await {
                    PartResult::Done(r) => r,
                    PartResult::Resend { alone } => {
                        METRICS
                            .batch_resends
                            .with_label_values(&[slot.name()])
                            .inc();
                        if alone {
                            part = None;
                        }
                        continue;
                    }
                },
                None => slot.adapter(job.lane).send(msg).await,
            };
            METRICS
                .provider_duration
                .with_label_values(&[slot.name()])
                .observe(t0.elapsed().as_secs_f64());
            // A provider's Retry-After is honoured up to the configured cap, never longer.
            if let Err(e) = &mut r {
                e.retry_after = e.retry_after.map(|d| d.min(s.max_retry_after));
            }
            break Ok(r);
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                slot.breaker.abandon(admitted);
                if let crate::ratelimit::LimitError::Blocked(wait) = e {
                    // Rate-limited for longer than a send may hold its slot: skipped like an open
                    // breaker, so the route's next provider is tried or the job is put back.
                    tracing::info!(job_id = %job.id, provider = slot.name(), wait_ms = wait.as_millis() as u64,
                        "the provider's next permit is too far off; skipped");
                    reopens = Some(reopens.map_or(wait, |r| r.min(wait)));
                    down_for = Some(down_for.unwrap_or(Duration::ZERO));
                    continue;
                }
                METRICS.redis_errors.with_label_values(&["ratelimit"]).inc();
                tracing::warn!(job_id = %job.id, provider = slot.name(), error.message = %e, "no rate-limit permit; retrying later");
                last = Some(Failed {
                    provider: slot.name(),
                    error: SendError {
                        class: ErrorClass::Transient,
                        message: e.to_string(),
                        http_status: None,
                        retry_after: None,
                    },
                    started_at: try_started,
                    finished_at: Utc::now(),
                });
                break;
            }
        };
        tracing::Span::current().record("provider", slot.name());
        if let Some(from) = failed_over_from.take() {
            METRICS
                .failovers
                .with_label_values(&[from, slot.name()])
                .inc();
        }
        // A 429 is a healthy provider asking us to slow down (the back-off and Retry-After
        // handle it), not a failure that should open its breaker.
        slot.record(
            admitted,
            match &result {
                Err(e) if e.http_status == Some(429) => Ok(()),
                r => r.as_ref().map(|_| ()).map_err(|e| e.class),
            },
        );
        match result {
            Ok(acc) => {
                let mut o = outcome(
                    Status::Sent,
                    Some(slot.name()),
                    None,
                    Some(acc.http_status),
                    acc.message_id,
                );
                o.started_at = try_started;
                o.tried = tried;
                return finish(o, After::Ack);
            }
            Err(e) => {
                METRICS
                    .provider_errors
                    .with_label_values(&[slot.name(), e.class.as_str()])
                    .inc();
                tracing::info!(job_id = %job.id, lane = %job.lane, provider = slot.name(), attempt,
                    class = e.class.as_str(), http_status = e.http_status,
                    error.message = %crate::provider::scrub(&e.message), "send failed");
                if e.http_status == Some(429)
                    && let Some(limit) = &slot.limit
                {
                    // Every worker waits, not just this one.
                    let wait = e.retry_after.unwrap_or(Duration::from_secs(1));
                    METRICS
                        .provider_backoffs
                        .with_label_values(&[slot.name()])
                        .inc();
                    if let Err(err) = shared.limiter.back_off(slot.name(), limit, wait).await {
                        tracing::warn!(provider = slot.name(), error.message = %err, "could not set the cluster back-off");
                    }
                }
                let not_taken = fate::may_fail_over(e.class);
                last = Some(Failed {
                    provider: slot.name(),
                    error: e,
                    started_at: try_started,
                    finished_at: Utc::now(),
                });
                if !not_taken {
                    break;
                }
            }
        }
    }

    let Some(Failed {
        provider,
        error: e,
        started_at: try_started,
        ..
    }) = last
    else {
        // Every provider of the route has its breaker open: put the job back without using an
        // attempt (a quota or auth problem must not burn a job's retries), no sooner than the
        // first breaker half-opens, and, with full jitter, up to as long as the route has been
        // down (capped at the longest retry delay): a long outage cycles its backlog through
        // Redis and Postgres ever more slowly instead of every few seconds.
        let reopen = reopens.unwrap_or(Duration::from_secs(1));
        let spread = down_for
            .unwrap_or_default()
            .min(Duration::from_millis(s.retry_max_ms));
        let wait =
            reopen + Duration::from_millis(rand::random_range(0..=spread.as_millis() as u64));
        return defer(
            "every provider of the route is paused, rate-limited or has its breaker open",
            wait,
        );
    };
    // The route ended in `e`: this attempt's own row; the providers before it are in `tried`.
    let ended = |status: Status, e: &SendError| {
        let mut o = outcome(
            status,
            Some(provider),
            Some(e.message.clone()),
            e.http_status,
            None,
        );
        o.started_at = try_started;
        o.tried = tried.clone();
        o
    };
    if e.class == ErrorClass::Ambiguous {
        let why = if e.http_status.is_some() {
            "server_error"
        } else {
            "no_response"
        };
        METRICS.ambiguous.with_label_values(&[why]).inc();
    }
    match fate::after_error(e.class, attempt, s.max_attempts, s.ambiguous) {
        // Final `unknown`: an operator decides (the attempt log has the error).
        Fate::Failed => finish(ended(Status::Failed, &e), After::Ack),
        Fate::Unknown => finish(ended(Status::Unknown, &e), After::Ack),
        Fate::RetryUnknown => {
            // At-least-once: send again later; the attempt is logged `unknown`, so a
            // duplicate it may cause is counted.
            let mut o = ended(Status::Retrying, &e);
            o.attempt_outcome = Some(Status::Unknown.as_str());
            retry(o, attempt, None)
        }
        Fate::Dead => {
            tracing::warn!(job_id = %job.id, lane = %job.lane, provider, attempt,
                class = e.class.as_str(), http_status = e.http_status,
                "attempts used up; dead-lettering");
            let dl = DeadLetter {
                entry_id: job.entry_id.clone(),
                reason: dead_reason::MAX_ATTEMPTS.into(),
                class: e.class.as_str().to_owned(),
                error: e.message.clone(),
                attempts: attempt,
            };
            finish(ended(Status::Dead, &e), After::Dead(dl))
        }
        Fate::Retry => retry(ended(Status::Retrying, &e), attempt, e.retry_after),
    }
}

/// A provider's answer that did not send the email, with when the attempt on it ran: either
/// the route moved on (it becomes a `failed_over` row) or it decided the attempt.
struct Failed<'a> {
    provider: &'a str,
    error: SendError,
    started_at: chrono::DateTime<Utc>,
    finished_at: chrono::DateTime<Utc>,
}

impl Failed<'_> {
    fn into_tried(self) -> Tried {
        Tried {
            provider: self.provider.to_owned(),
            http_status: self.error.http_status.map(i32::from),
            error: self.error.message,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}
