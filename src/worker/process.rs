//! One batch: decode, claim in one statement, send the claimed jobs concurrently, and pass
//! every entry's fate to the recorder. Every entry read yields exactly one [`Item`], so the
//! recorder can account for (ack or abandon) all of them.

use super::recorder::{After, EntryRef, Item};
use super::{AmbiguousPolicy, Shared, backoff};
use crate::metrics::METRICS;
use crate::provider::{ErrorClass, Message};
use crate::store::emails::{self, ClaimResult, NewRow, Outcome};
use crate::stream::consumer::DeadLetter;
use crate::stream::{Job, RawEntry, wire};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
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
    let (mine, others): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| attempts.contains_key(&j.id.as_uuid()));
    let mut busy = 0;
    for j in &others {
        if finished.contains(&j.id.as_uuid()) {
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

    let names: Vec<&str> = mine
        .iter()
        .filter_map(|j| j.email.template_name())
        .collect();
    let templates = if names.is_empty() {
        HashMap::new()
    } else {
        let mut wait = Duration::from_millis(100);
        loop {
            match shared.templates(&names).await {
                Ok(t) => break t,
                Err(e) => {
                    METRICS.store_errors.with_label_values(&["templates"]).inc();
                    tracing::warn!(error.message = %e, "template lookup failed; backing off");
                    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                        // Claimed but unsent: the claims expire and the entries are reclaimed.
                        let _ = out.send(Item::Abandon(mine.len()));
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
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
            async move {
                let item = send_one(&shared, &job, attempt, token, &templates).await;
                let _ = out.send(item);
            }
        })
        .await;
}

fn new_row(j: &Job) -> NewRow {
    NewRow {
        id: j.id.as_uuid(),
        lane: j.lane.as_str(),
        partition: j.partition as i16,
        idempotency_key: j.idem.clone(),
        tenant: j.email.tenant.clone(),
        recipient_domain: j.email.recipient_domain().to_owned(),
        template: j.email.template_name().map(str::to_owned),
        payload: j.payload_json.clone(),
        enqueued_at: DateTime::from_timestamp_millis(j.enqueued_at_ms).unwrap_or_else(Utc::now),
        due_at: j.email.send_at,
    }
}

async fn claim_with_retry(shared: &Shared, rows: &[NewRow], token: Uuid) -> Option<ClaimResult> {
    let mut wait = Duration::from_millis(100);
    loop {
        match emails::claim(
            &shared.deps.pg,
            rows,
            token,
            shared.settings.visibility_timeout_ms as i64,
        )
        .await
        {
            Ok(c) => return Some(c),
            Err(e) => {
                METRICS.store_errors.with_label_values(&["claim"]).inc();
                tracing::warn!(error.message = %e, retry_in_ms = wait.as_millis() as u64, "claim failed; backing off");
                if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn send_one(
    shared: &Shared,
    job: &Job,
    attempt: i32,
    token: Uuid,
    templates: &HashMap<String, Arc<crate::store::templates::Template>>,
) -> Item {
    let s = &shared.settings;
    let started = Utc::now();
    let entry = EntryRef::of_job(job);
    let provider = shared.deps.providers.pick(job.email.provider.as_deref());
    let provider_name = provider.map(|p| p.name().to_owned());
    let outcome = |status: &'static str,
                   error: Option<String>,
                   http: Option<u16>,
                   msg: Option<String>| Outcome {
        id: job.id.as_uuid(),
        token,
        status,
        attempt,
        provider: provider_name.clone(),
        message_id: msg,
        error,
        http_status: http.map(i32::from),
        started_at: started,
        finished_at: Utc::now(),
        due_at: None,
        attempt_outcome: None,
    };
    let finish = |o: Outcome, after: After| Item::Outcome {
        outcome: o,
        entry: entry.clone(),
        after,
        enqueued_at_ms: job.enqueued_at_ms,
    };

    let retry = |mut o: Outcome, attempt: i32, retry_after: Option<Duration>| {
        let delay = backoff(attempt, s.retry_base_ms, s.retry_max_ms, retry_after);
        let due_ms = Utc::now().timestamp_millis() + delay.as_millis() as i64;
        o.due_at = DateTime::from_timestamp_millis(due_ms);
        finish(
            o,
            After::Retry {
                due_ms,
                member: wire::delayed_member(job),
            },
        )
    };

    let template = job
        .email
        .template_name()
        .and_then(|n| templates.get(n))
        .map(|t| t.as_ref());
    let rendered = match shared.renderer.render(&job.email, template) {
        Ok(r) => r,
        Err(e) => {
            return finish(
                outcome("failed", Some(format!("render: {e}")), None, None),
                After::Ack,
            );
        }
    };
    let Some(provider) = provider else {
        return finish(
            outcome("failed", Some("no provider configured".into()), None, None),
            After::Ack,
        );
    };

    let result = {
        shared.deps.providers.smooth(provider.name()).await;
        let _permit = shared.sends.acquire().await;
        let t0 = std::time::Instant::now();
        let r = provider
            .send(Message {
                job_id: job.id,
                email: &job.email,
                rendered: &rendered,
            })
            .await;
        METRICS
            .provider_duration
            .with_label_values(&[provider.name()])
            .observe(t0.elapsed().as_secs_f64());
        r
    };
    match result {
        Ok(acc) => finish(
            outcome("sent", None, Some(acc.http_status), acc.message_id),
            After::Ack,
        ),
        Err(e) => {
            tracing::info!(job_id = %job.id, lane = %job.lane, provider = provider.name(), attempt,
                class = e.class.as_str(), http_status = e.http_status, "send failed");
            match e.class {
                ErrorClass::Permanent => finish(
                    outcome("failed", Some(e.message), e.http_status, None),
                    After::Ack,
                ),
                ErrorClass::Ambiguous => {
                    METRICS.ambiguous.with_label_values(&["no_response"]).inc();
                    if s.ambiguous == AmbiguousPolicy::Hold || attempt >= s.max_attempts {
                        // Final `unknown`: an operator decides (the attempt log has the error).
                        finish(
                            outcome("unknown", Some(e.message), e.http_status, None),
                            After::Ack,
                        )
                    } else {
                        // At-least-once: send again later; the attempt is logged `unknown`, so
                        // a duplicate it may cause is counted.
                        let mut o = outcome("retrying", Some(e.message), e.http_status, None);
                        o.attempt_outcome = Some("unknown");
                        retry(o, attempt, None)
                    }
                }
                ErrorClass::Transient | ErrorClass::QuotaAuth if attempt >= s.max_attempts => {
                    let dl = DeadLetter {
                        entry_id: job.entry_id.clone(),
                        reason: "max_attempts".into(),
                        class: e.class.as_str().to_owned(),
                        error: e.message.clone(),
                        attempts: attempt,
                    };
                    finish(
                        outcome("dead", Some(e.message), e.http_status, None),
                        After::Dead(dl),
                    )
                }
                ErrorClass::Transient | ErrorClass::QuotaAuth => retry(
                    outcome("retrying", Some(e.message), e.http_status, None),
                    attempt,
                    e.retry_after,
                ),
            }
        }
    }
}
