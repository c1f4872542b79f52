//! One batch: decode, claim in one statement, send the claimed jobs concurrently, and pass
//! every entry's fate to the recorder. Every entry read yields exactly one [`Item`], so the
//! recorder can account for (ack or abandon) all of them.

use super::persist::{GiveUp, Op, until_ok};
use super::recorder::{After, EntryRef, Item, Outbox};
use super::{Shared, send};
use crate::domain::{Lane, Status};
use crate::metrics::METRICS;
use crate::store::emails::{self, ClaimResult, NewRow, Outcome};
use crate::store::suppressions;
use crate::stream::consumer::{DeadLetter, dead_reason};
use crate::stream::{Job, RawEntry, wire};
use chrono::Utc;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// Give up on `jobs` without any write: they stay pending, and their room goes back to their
/// lanes' pools.
fn abandon<'a>(out: &Outbox, jobs: impl IntoIterator<Item = &'a Job>) {
    let mut counts = [0usize; 2];
    for j in jobs {
        counts[j.lane.index()] += 1;
    }
    for lane in Lane::ALL {
        if counts[lane.index()] > 0 {
            let _ = out.send(Item::Abandon(lane, counts[lane.index()]));
        }
    }
}

pub(super) async fn batch(shared: Arc<Shared>, entries: Vec<RawEntry>, out: Outbox) {
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

    // A batch with a tx job in it (reclaim mixes lanes) uses tx's own connections.
    let lane = if jobs.iter().any(|j| j.lane == Lane::Tx) {
        Lane::Tx
    } else {
        Lane::Bulk
    };
    let token = Uuid::now_v7();
    let rows: Vec<NewRow> = jobs.iter().map(new_row).collect();
    // The suppression look-up (a read, on another connection) runs beside the claim rather
    // than after it: one Postgres round trip less on every batch's way to the provider.
    let addresses = recipients(&jobs);
    let (claimed, found) = tokio::join!(
        claim_with_retry(&shared, lane, &rows, token),
        suppressions_with_retry(&shared, lane, &addresses)
    );
    let result = match claimed {
        Some(c) => c,
        None => {
            // Shutting down with Postgres unreachable: leave the entries pending for reclaim.
            abandon(&out, &jobs);
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
    let mut busy = Vec::new();
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
            busy.push(j);
        }
    }
    abandon(&out, busy);
    if mine.is_empty() {
        return;
    }
    shared.live.add(
        token,
        mine.iter().map(|j| (j.id.as_uuid(), EntryRef::of_job(j))),
    );

    // The idempotency backstop: a job whose key another job holds within the dedup window is
    // a duplicate the Redis marker missed (a failover lost it): recorded `duplicate`, acked,
    // never sent. One statement, only for a batch with keys.
    let mut mine = mine;
    let keyed: Vec<(String, String, Uuid)> = mine
        .iter()
        .filter_map(|j| {
            let k = j.idem.as_ref()?;
            Some((
                j.email.tenant.clone().unwrap_or_default(),
                k.clone(),
                j.id.as_uuid(),
            ))
        })
        .collect();
    if !keyed.is_empty() {
        let window = shared.settings.dedup_window;
        let found = until_ok(
            &shared,
            Op {
                errors: &METRICS.store_errors,
                label: "idempotency",
                failed: "idempotency backstop failed; backing off",
                first: Duration::from_millis(100),
                give_up: GiveUp::WhenDraining,
            },
            || emails::idempotency::hold(shared.pg(lane), &keyed, window),
        )
        .await;
        let Some(dups) = found else {
            abandon(&out, &mine);
            return;
        };
        if !dups.is_empty() {
            let (dup, rest): (Vec<Job>, Vec<Job>) = mine
                .into_iter()
                .partition(|j| dups.contains_key(&j.id.as_uuid()));
            mine = rest;
            METRICS.duplicates_refused.inc_by(dup.len() as u64);
            for job in dup {
                let of = dups[&job.id.as_uuid()];
                tracing::warn!(job_id = %job.id, duplicate_of = %of,
                    "a second job with the same idempotency key; not sent");
                let _ = out.send(unsent(
                    &job,
                    token,
                    attempts[&job.id.as_uuid()],
                    Status::Duplicate,
                    format!(
                        "duplicate of job {of}: its idempotency key was taken within the dedup window"
                    ),
                ));
            }
            if mine.is_empty() {
                return;
            }
        }
    }

    // Suppressions (looked up beside the claim): suppressed recipients are dropped; a job
    // left with no `to` is recorded `suppressed` and never reaches a provider.
    let suppressed = match found {
        Some(set) => drop_suppressed(&mut mine, &set),
        None => {
            abandon(&out, &mine);
            return;
        }
    };
    for (job, n) in suppressed {
        let _ = out.send(unsent(
            &job,
            token,
            attempts[&job.id.as_uuid()],
            Status::Suppressed,
            format!("suppressed: {n} of the recipients are on the suppression list"),
        ));
    }
    if mine.is_empty() {
        return;
    }
    // Bulk email carries a one-click unsubscribe link (RFC 8058) for its one recipient
    // (`Email::check_lane`: a bulk entry with several is dead-lettered when it is decoded).
    if let Some(links) = &shared.settings.unsubscribe {
        let now = Utc::now().timestamp();
        for job in mine.iter_mut().filter(|j| j.lane == Lane::Bulk) {
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
            || shared.templates(lane, &names),
        )
        .await;
        match found {
            Some(t) => t,
            None => {
                // Claimed but unsent: the claims expire and the entries are reclaimed.
                abandon(&out, &mine);
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
                let item = send::one(&shared, &job, attempt, token, &templates).await;
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
            .with_label_values(&[dead_reason::MAX_ATTEMPTS])
            .inc();
        tracing::warn!(job_id = %j.id, attempts = d.attempts, "every attempt ended without an outcome; dead-lettering");
    } else {
        tracing::warn!(job_id = %j.id, "a dead job's entry never reached the dead stream; dead-lettering it now");
    }
    DeadLetter {
        entry_id: j.entry_id.clone(),
        reason: if d.capped {
            dead_reason::MAX_ATTEMPTS
        } else {
            dead_reason::DEAD_UNLETTERED
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

async fn claim_with_retry(
    shared: &Shared,
    lane: Lane,
    rows: &[NewRow],
    token: Uuid,
) -> Option<ClaimResult> {
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
                shared.pg(lane),
                rows,
                token,
                s.visibility_timeout_ms as i64,
                s.max_attempts,
            )
        },
    )
    .await
}

/// The active suppressions among `addresses` (one query for a whole batch), retried as the
/// claim is; `None` once the worker drains with Postgres unreachable.
async fn suppressions_with_retry(
    shared: &Shared,
    lane: Lane,
    addresses: &[String],
) -> Option<suppressions::Active> {
    until_ok(
        shared,
        Op {
            errors: &METRICS.store_errors,
            label: "suppressions",
            failed: "suppression check failed; backing off",
            first: Duration::from_millis(100),
            give_up: GiveUp::WhenDraining,
        },
        || suppressions::active(shared.pg(lane), addresses),
    )
    .await
}

/// The outcome of a claimed job that is final without a provider call (`suppressed`,
/// `duplicate`): recorded with `why`, and its entry acked.
fn unsent(job: &Job, token: Uuid, attempt: i32, status: Status, why: String) -> Item {
    let now = Utc::now();
    Item::Outcome {
        outcome: Outcome {
            id: job.id.as_uuid(),
            token,
            status,
            attempt,
            provider: None,
            message_id: None,
            error: Some(why),
            http_status: None,
            started_at: now,
            finished_at: now,
            retry_in_ms: None,
            attempt_outcome: None,
            tried: Vec::new(),
        },
        entry: EntryRef::of_job(job),
        after: After::Ack,
        enqueued_at_ms: job.enqueued_at_ms,
    }
}
