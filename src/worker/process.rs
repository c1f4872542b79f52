//! One batch: decode, claim in one statement, send the claimed jobs concurrently, and pass
//! every entry's fate to the recorder. Every entry read yields exactly one [`Item`], so the
//! recorder can account for (ack or abandon) all of them.

use super::Shared;
use super::fate::backoff;
use super::fate::{self, Fate};
use super::persist::{GiveUp, Op, until_ok};
use super::recorder::{After, EntryRef, Item};
use crate::domain::Status;
use crate::metrics::METRICS;
use crate::provider::breaker::Admit;
use crate::provider::{ErrorClass, Message, SendError};
use crate::store::emails::{self, ClaimResult, NewRow, Outcome, Tried};
use crate::store::suppressions;
use crate::stream::consumer::DeadLetter;
use crate::stream::{Job, RawEntry, wire};
use chrono::Utc;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;
use uuid::Uuid;

pub(super) async fn batch(shared: Arc<Shared>, entries: Vec<RawEntry>, out: UnboundedSender<Item>) {
    let max_payload = shared.settings.max_payload;
    let mut jobs = Vec::with_capacity(entries.len());
    let mut seen = HashSet::with_capacity(entries.len());
    for raw in &entries {
        let entry = EntryRef::of(raw);
        match wire::decode(raw, max_payload) {
            Ok(job) if seen.insert(job.id) => jobs.push(job),
            // The same job twice in one batch: one send covers both entries.
            Ok(_) => {
                let _ = out.send(Item::Ack(entry));
            }
            Err(e) => {
                METRICS.dead_letters.with_label_values(&[e.reason()]).inc();
                tracing::warn!(entry_id = %raw.entry_id, lane = %raw.lane, reason = e.reason(), "malformed entry; dead-lettering");
                let _ = out.send(Item::Dead(
                    entry,
                    DeadLetter {
                        entry_id: raw.entry_id.clone(),
                        reason: e.reason().to_owned(),
                        class: "malformed".to_owned(),
                        error: e.to_string(),
                        attempts: 0,
                    },
                ));
            }
        }
    }
    if jobs.is_empty() {
        return;
    }

    let token = Uuid::now_v7();
    let rows: Vec<NewRow> = jobs.iter().map(new_row).collect();
    let result = match claim_with_retry(&shared, &rows, token).await {
        Some(c) => c,
        None => {
            // Shutting down with Postgres unreachable: leave the entries pending for reclaim.
            let _ = out.send(Item::Abandon(jobs.len()));
            return;
        }
    };
    let takeovers = result.claimed.iter().filter(|c| c.takeover).count();
    if takeovers > 0 {
        // The earlier attempt may have reached the provider: a legitimate, counted duplicate.
        METRICS
            .ambiguous
            .with_label_values(&["expired_claim"])
            .inc_by(takeovers as u64);
        tracing::warn!(
            count = takeovers,
            "took over jobs whose claim expired while sending; resending (each may duplicate)"
        );
    }
    let attempts: HashMap<Uuid, i32> = result.claimed.iter().map(|c| (c.id, c.attempt)).collect();
    let finished: HashSet<Uuid> = result.finished.into_iter().collect();
    let dead: HashMap<Uuid, emails::DeadRow> = result.dead.into_iter().map(|d| (d.id, d)).collect();
    let (mine, others): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| attempts.contains_key(&j.id.as_uuid()));
    let mut busy = 0;
    for j in &others {
        if let Some(d) = dead.get(&j.id.as_uuid()) {
            // Dead in the ledger: the entry goes to the dead stream (idempotent: only while
            // it is pending), never plainly acked, so `mailfleet dlq` sees and replays it.
            let _ = out.send(Item::Dead(EntryRef::of_job(j), dead_letter_of(j, d)));
        } else if finished.contains(&j.id.as_uuid()) {
            METRICS.already_final.inc();
            let _ = out.send(Item::Ack(EntryRef::of_job(j)));
        } else {
            // Another live claim is sending this job: leave the entry pending; reclaim revisits
            // it once that claim is final (then it is acked) or expired (then it is sent).
            busy += 1;
        }
    }
    if busy > 0 {
        let _ = out.send(Item::Abandon(busy));
    }
    if mine.is_empty() {
        return;
    }
    shared.live.add(
        token,
        mine.iter().map(|j| (j.id.as_uuid(), EntryRef::of_job(j))),
    );

    // Suppressions: one lookup for every recipient of the batch. Suppressed recipients are
    // dropped; a job left with no `to` is recorded `suppressed` and never reaches a provider.
    let mut mine = mine;
    let suppressed = {
        let addresses = recipients(&mine);
        let found = until_ok(
            &shared,
            Op {
                errors: &METRICS.store_errors,
                label: "suppressions",
                failed: "suppression check failed; backing off",
                first: Duration::from_millis(100),
                give_up: GiveUp::WhenDraining,
            },
            || suppressions::active(&shared.deps.pg, &addresses),
        )
        .await;
        match found {
            Some(set) => drop_suppressed(&mut mine, &set),
            None => {
                let _ = out.send(Item::Abandon(mine.len()));
                return;
            }
        }
    };
    for (job, n) in suppressed {
        let now = Utc::now();
        let _ = out.send(Item::Outcome {
            outcome: Outcome {
                id: job.id.as_uuid(),
                token,
                status: Status::Suppressed,
                attempt: attempts[&job.id.as_uuid()],
                provider: None,
                message_id: None,
                error: Some(format!(
                    "suppressed: {n} of the recipients are on the suppression list"
                )),
                http_status: None,
                started_at: now,
                finished_at: now,
                retry_in_ms: None,
                attempt_outcome: None,
                tried: Vec::new(),
            },
            entry: EntryRef::of_job(&job),
            after: After::Ack,
            enqueued_at_ms: job.enqueued_at_ms,
        });
    }
    if mine.is_empty() {
        return;
    }
    // Bulk email carries a one-click unsubscribe link (RFC 8058) for its first recipient.
    if let Some(links) = &shared.settings.unsubscribe {
        let now = Utc::now().timestamp();
        for job in mine
            .iter_mut()
            .filter(|j| j.lane == crate::domain::Lane::Bulk)
        {
            let Some(to) = job.email.to.first() else {
                continue;
            };
            let url = links.url(
                to.address.as_str(),
                job.email.tenant.as_deref(),
                crate::unsubscribe::schedule_of(job.idem.as_deref()),
                now,
            );
            job.email.set_one_click_unsubscribe(&url);
        }
    }

    let names: Vec<&str> = mine
        .iter()
        .filter_map(|j| j.email.template_name())
        .collect();
    let templates = if names.is_empty() {
        HashMap::new()
    } else {
        let found = until_ok(
            &shared,
            Op {
                errors: &METRICS.store_errors,
                label: "templates",
                failed: "template lookup failed; backing off",
                first: Duration::from_millis(100),
                give_up: GiveUp::WhenDraining,
            },
            || shared.templates(&names),
        )
        .await;
        match found {
            Some(t) => t,
            None => {
                // Claimed but unsent: the claims expire and the entries are reclaimed.
                let _ = out.send(Item::Abandon(mine.len()));
                return;
            }
        }
    };
    let templates = Arc::new(templates);
    futures::stream::iter(mine)
        .for_each_concurrent(None, |job| {
            let shared = shared.clone();
            let out = out.clone();
            let templates = templates.clone();
            let attempt = attempts[&job.id.as_uuid()];
            // Every log line of a send carries these (provider once one is tried); never the
            // recipient, only its domain.
            let span = tracing::info_span!(
                "send",
                job_id = %job.id,
                lane = %job.lane,
                attempt,
                domain = job.email.recipient_domain(),
                provider = tracing::field::Empty,
            );
            async move {
                let item = send_one(&shared, &job, attempt, token, &templates).await;
                let _ = out.send(item);
            }
            .instrument(span)
        })
        .await;
}

/// Every recipient of `jobs`, lower-cased, once each: the suppression look-up's input.
fn recipients(jobs: &[Job]) -> Vec<String> {
    let mut a: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.email.to.iter().chain(&j.email.cc).chain(&j.email.bcc))
        .map(|m| m.address.as_str().to_lowercase())
        .collect();
    a.sort_unstable();
    a.dedup();
    a
}

/// Drop the suppressed recipients of `jobs`; take out (and return, with how many recipients
/// were suppressed) the jobs left with nobody in `to`.
fn drop_suppressed(jobs: &mut Vec<Job>, set: &suppressions::Active) -> Vec<(Job, usize)> {
    if set.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut kept = Vec::with_capacity(jobs.len());
    for mut job in jobs.drain(..) {
        let tenant = job.email.tenant.clone();
        let mut n = 0;
        for list in [&mut job.email.to, &mut job.email.cc, &mut job.email.bcc] {
            list.retain(|m| {
                let hit = suppressions::is_suppressed(
                    set,
                    &m.address.as_str().to_lowercase(),
                    tenant.as_deref(),
                );
                n += usize::from(hit);
                !hit
            });
        }
        if n > 0 {
            METRICS.suppressed.inc_by(n as u64);
        }
        if job.email.to.is_empty() {
            out.push((job, n));
        } else {
            kept.push(job);
        }
    }
    *jobs = kept;
    out
}

/// The dead-letter entry for a job the claim found (or made) `dead`.
fn dead_letter_of(j: &Job, d: &emails::DeadRow) -> DeadLetter {
    if d.capped {
        METRICS
            .dead_letters
            .with_label_values(&["max_attempts"])
            .inc();
        tracing::warn!(job_id = %j.id, attempts = d.attempts, "every attempt ended without an outcome; dead-lettering");
    } else {
        tracing::warn!(job_id = %j.id, "a dead job's entry never reached the dead stream; dead-lettering it now");
    }
    DeadLetter {
        entry_id: j.entry_id.clone(),
        reason: if d.capped {
            "max_attempts"
        } else {
            "dead_unlettered"
        }
        .to_owned(),
        class: "no_outcome".to_owned(),
        error: d
            .last_error
            .clone()
            .unwrap_or_else(|| "dead in Postgres".to_owned()),
        attempts: d.attempts,
    }
}

fn new_row(j: &Job) -> NewRow {
    NewRow::of(emails::JobFacts {
        id: j.id,
        lane: j.lane,
        partition: j.partition,
        idempotency_key: j.idem.as_deref(),
        email: &j.email,
        payload_json: &j.payload_json,
        enqueued_at_ms: j.enqueued_at_ms,
    })
}

async fn claim_with_retry(shared: &Shared, rows: &[NewRow], token: Uuid) -> Option<ClaimResult> {
    let s = &shared.settings;
    until_ok(
        shared,
        Op {
            errors: &METRICS.store_errors,
            label: "claim",
            failed: "claim failed; backing off",
            first: Duration::from_millis(100),
            give_up: GiveUp::WhenDraining,
        },
        || {
            emails::claim(
                &shared.deps.pg,
                rows,
                token,
                s.visibility_timeout_ms as i64,
                s.max_attempts,
            )
        },
    )
    .await
}

async fn send_one(
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
    let mut last: Option<(&str, SendError)> = None;
    let mut tried: Vec<Tried> = Vec::new();
    let mut try_started = started;
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
        let _cap = slot.ready().await;
        let _permit = shared.sends.acquire().await;
        if let Some((provider, e)) = last.take() {
            tried.push(Tried {
                provider: provider.to_owned(),
                http_status: e.http_status.map(i32::from),
                error: e.message,
                started_at: try_started,
                finished_at: Utc::now(),
            });
            // Kept for the failover metric below.
            last = Some((provider, SendError::permanent(String::new())));
        }
        try_started = Utc::now();
        if let Some(limit) = &slot.limit
            && let Err(e) = shared.limiter.acquire(slot.name(), limit, tenant).await
        {
            slot.breaker.abandon(admitted);
            METRICS.redis_errors.with_label_values(&["ratelimit"]).inc();
            tracing::warn!(job_id = %job.id, provider = slot.name(), error.message = %e, "no rate-limit permit; retrying later");
            last = Some((
                slot.name(),
                SendError {
                    class: ErrorClass::Transient,
                    message: e.to_string(),
                    http_status: None,
                    retry_after: None,
                },
            ));
            break;
        }
        tracing::Span::current().record("provider", slot.name());
        if let Some((from, _)) = last.take() {
            METRICS
                .failovers
                .with_label_values(&[from, slot.name()])
                .inc();
        }
        let result = {
            let t0 = std::time::Instant::now();
            let r = slot
                .provider
                .send(Message {
                    job_id: job.id,
                    email: &job.email,
                    rendered: &rendered,
                })
                .await;
            METRICS
                .provider_duration
                .with_label_values(&[slot.name()])
                .observe(t0.elapsed().as_secs_f64());
            r
        };
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
                    class = e.class.as_str(), http_status = e.http_status, "send failed");
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
                last = Some((slot.name(), e));
                if !not_taken {
                    break;
                }
            }
        }
    }

    let Some((provider, e)) = last else {
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
            "every provider of the route is paused or has its breaker open",
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
            let dl = DeadLetter {
                entry_id: job.entry_id.clone(),
                reason: "max_attempts".into(),
                class: e.class.as_str().to_owned(),
                error: e.message.clone(),
                attempts: attempt,
            };
            finish(ended(Status::Dead, &e), After::Dead(dl))
        }
        Fate::Retry => retry(ended(Status::Retrying, &e), attempt, e.retry_after),
    }
}
