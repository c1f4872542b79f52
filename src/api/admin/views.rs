//! The admin page itself: the cluster at a glance, schedules, dead letters and suppressions,
//! rendered as [`Markup`] (every value escaped by construction).

use super::markup::{Markup, button, flash, page, time};
use super::session::{Auth, authenticate, csrf_for};
use super::{S, SHOWN};
use crate::cluster::{self, Snapshot};
use crate::dlq::{self, DeadEntry};
use crate::store::schedules::{self, Run, Schedule};
use crate::store::suppressions::{self, Suppression};
use crate::{html, markup};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(serde::Deserialize)]
pub(super) struct IndexQuery {
    done: Option<String>,
}

pub(super) async fn index(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<IndexQuery>,
) -> Response {
    let csrf = match authenticate(&s, &headers).await {
        Err(r) => return r,
        Ok(None) => return Redirect::to("/admin/login").into_response(),
        Ok(Some(Auth::Session(sess))) => csrf_for(&s.token, &sess),
        Ok(Some(Auth::Bearer)) => String::new(),
    };
    let (snap, dead, sched, supp) = tokio::join!(
        cluster::snapshot(&s.redis, &s.pg, &s.keys),
        async {
            let mut c = s.redis.get().await.map_err(|e| e.to_string())?;
            dlq::latest(&mut *c, &s.keys, SHOWN)
                .await
                .map_err(|e| e.to_string())
        },
        schedules_with_last_run(&s.pg),
        suppressions::list(&s.pg, None, None, SHOWN as i64),
    );
    let mut o = Markup::new();
    if let Some(f) = q.done.as_deref().and_then(flash) {
        html!(o, "<p class=\"flash\">{}</p>", f);
    }
    html!(
        o,
        "<div>Updated {} · {}</div>",
        time(Utc::now()),
        button("/admin/logout", &csrf, &[], "Sign out", "logout")
    );
    match &snap {
        Ok(snap) => cluster_sections(&mut o, snap, &csrf),
        Err(e) => html!(o, "<h2>Cluster</h2><p class=\"bad\">Unavailable: {}</p>", e),
    }
    o.raw("<h2>Schedules</h2>");
    match &sched {
        Ok(rows) => schedules_section(&mut o, rows),
        Err(e) => html!(o, "<p class=\"bad\">Unavailable: {}</p>", e),
    }
    o.raw("<h2 id=\"dead\">Dead letters</h2>");
    match &dead {
        Ok(rows) => dead_section(&mut o, rows, &csrf),
        Err(e) => html!(o, "<p class=\"bad\">Unavailable: {}</p>", e),
    }
    o.raw("<h2 id=\"suppressions\">Suppressions</h2>");
    match &supp {
        Ok(rows) => suppressions_section(&mut o, rows, &csrf),
        Err(e) => html!(o, "<p class=\"bad\">Unavailable: {}</p>", e),
    }
    page(StatusCode::OK, "mailfleet admin", &o)
}

fn cluster_sections(o: &mut Markup, s: &Snapshot, csrf: &str) {
    o.raw(
        "<h2>Lanes</h2><table id=\"lanes\"><tr><th>Lane</th><th>Length</th><th>Pending</th>\
         <th>Lag</th><th>Oldest pending (s)</th><th>Recorded in the last minute</th></tr>",
    );
    for (lane, d) in &s.depth.lanes {
        let recent = s
            .recent
            .get(*lane)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        html!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            lane,
            d.length,
            d.pending,
            d.lag,
            format!("{:.1}", d.oldest_pending_ms as f64 / 1000.0),
            recent
        );
    }
    html!(
        o,
        "</table><p>Delayed <b>{}</b> · dead letters <b>{}</b> · workers alive <b>{}</b></p>",
        s.depth.delayed,
        s.depth.dead,
        s.depth.workers.len()
    );

    let t = &s.depth.tenants;
    html!(
        o,
        "<h2>Bulk tenants</h2><p>Active <b>{}</b> · waiting <b>{}</b> · in flight <b>{}</b> · \
         fairness spread <b>{}</b></p>",
        t.active,
        t.waiting,
        t.in_flight,
        format!("{:.1}", t.spread)
    );
    if !t.busiest.is_empty() {
        o.raw(
            "<table id=\"tenants\"><tr><th>Tenant</th><th>Waiting</th><th>In flight</th>\
             <th>Oldest waiting (s)</th><th>Sent in the last minute</th></tr>",
        );
        for b in &t.busiest {
            html!(
                o,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                b.tenant,
                b.waiting,
                b.in_flight,
                format!("{:.1}", b.oldest_waiting_ms as f64 / 1000.0),
                s.tenant_sent.get(&b.tenant).copied().unwrap_or(0)
            );
        }
        o.raw("</table>");
    }

    o.raw("<h2>Workers</h2><table id=\"workers\"><tr><th>Worker</th><th>Last report</th></tr>");
    let now_ms = Utc::now().timestamp_millis();
    for (w, at) in &s.depth.workers {
        html!(
            o,
            "<tr><td>{}</td><td>{} s ago</td></tr>",
            w,
            format!("{:.1}", (now_ms - at).max(0) as f64 / 1000.0)
        );
    }
    o.raw("</table>");

    let leader = match &s.lease {
        Some((owner, ttl)) => markup!("{} (lease {} ms left)", owner, ttl.as_millis()),
        None => markup!("<span class=\"bad\">none</span>"),
    };
    html!(
        o,
        "<h2>Scheduler</h2><p id=\"leader\">Leader {} · fence token <b>{}</b> (last written by {})</p>",
        leader,
        s.fence.0,
        s.fence.1.as_deref().unwrap_or("-")
    );

    o.raw(
        "<h2>Providers</h2><table id=\"providers\"><tr><th>Provider</th><th>Breaker</th>\
         <th>Workers reporting it not closed</th></tr>",
    );
    for (provider, by_worker) in &s.depth.breakers {
        let worst = by_worker.values().copied().max().unwrap_or(0);
        let open = by_worker.values().filter(|&&v| v > 0).count();
        let class = if worst == 0 { "ok" } else { "bad" };
        html!(
            o,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{} of {}</td></tr>",
            provider,
            class,
            cluster::breaker_name(worst),
            open,
            by_worker.len()
        );
    }
    o.raw("</table>");

    o.raw("<h2>Pauses</h2>");
    if s.depth.paused.is_empty() {
        o.raw("<p>Nothing is paused.</p>");
    } else {
        o.raw("<table id=\"pauses\"><tr><th>Paused</th><th>Since</th><th></th></tr>");
        for (field, since) in &s.depth.paused {
            let (scope, name) = field.split_once(':').unwrap_or((field.as_str(), ""));
            let since = DateTime::<Utc>::from_timestamp_millis(*since)
                .map(time)
                .unwrap_or_default();
            html!(
                o,
                "<tr><td>{} {}</td><td>{}</td><td>{}</td></tr>",
                scope,
                name,
                since,
                button(
                    "/admin/resume",
                    csrf,
                    &[("scope", scope), ("name", name)],
                    "Resume",
                    "resume"
                )
            );
        }
        o.raw("</table>");
    }
    html!(
        o,
        "<form method=\"post\" action=\"/admin/pause\" class=\"pause\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <select name=\"scope\"><option>lane</option><option>provider</option><option>tenant</option></select> \
         <input name=\"name\" placeholder=\"bulk, a provider or a tenant\" required maxlength=\"100\"> \
         <button type=\"submit\">Pause</button></form>",
        csrf
    );
}

async fn schedules_with_last_run(pg: &PgPool) -> Result<Vec<(Schedule, Option<Run>)>, String> {
    let list = schedules::list(pg).await.map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(list.len().min(SHOWN));
    for s in list.into_iter().take(SHOWN) {
        let last = schedules::runs(pg, s.id, 1)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next();
        out.push((s, last));
    }
    Ok(out)
}

fn schedules_section(o: &mut Markup, rows: &[(Schedule, Option<Run>)]) {
    if rows.is_empty() {
        o.raw("<p>No schedules.</p>");
        return;
    }
    o.raw(
        "<table id=\"schedules\"><tr><th>Schedule</th><th>Cron</th><th>Audience</th>\
         <th>State</th><th>Next tick</th><th>Last run</th></tr>",
    );
    for (s, last) in rows {
        let last = match last {
            Some(r) => format!(
                "{} {} ({}/{} enqueued)",
                time(r.tick),
                r.status,
                r.enqueued,
                r.total
            ),
            None => "never".into(),
        };
        html!(
            o,
            "<tr><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.name,
            s.cron,
            s.timezone,
            s.audience,
            if s.enabled { "enabled" } else { "paused" },
            time(s.next_tick),
            last
        );
    }
    o.raw("</table>");
}

fn dead_section(o: &mut Markup, rows: &[DeadEntry], csrf: &str) {
    if rows.is_empty() {
        o.raw("<p>No dead letters.</p>");
        return;
    }
    html!(
        o,
        "<p>The newest {} (all of them with <code>mailfleet dlq list</code>).</p>\
         <table id=\"dead-letters\"><tr><th>Dead at</th><th>Reason</th><th>Class</th><th>Lane</th>\
         <th>Job</th><th>Attempts</th><th>Replays</th><th>Error</th><th></th></tr>",
        rows.len()
    );
    for e in rows {
        let error: String = e.error.chars().take(120).collect();
        let partition = e.partition.to_string();
        html!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            e.dead_at.map(time).unwrap_or_default(),
            e.reason,
            e.class,
            e.lane,
            e.job_id.as_deref().unwrap_or("-"),
            e.attempts,
            e.replays,
            error,
            button(
                "/admin/dlq/replay",
                csrf,
                &[("partition", &partition), ("id", &e.dead_id)],
                "Replay",
                "replay"
            )
        );
    }
    o.raw("</table>");
}

fn suppressions_section(o: &mut Markup, rows: &[Suppression], csrf: &str) {
    html!(
        o,
        "<form method=\"post\" action=\"/admin/suppressions/add\" class=\"suppress\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input name=\"address\" type=\"email\" placeholder=\"address\" required maxlength=\"254\"> \
         <input name=\"tenant\" placeholder=\"tenant (empty: all)\" maxlength=\"100\"> \
         <input name=\"note\" placeholder=\"note\" maxlength=\"200\"> \
         <button type=\"submit\">Suppress</button></form>",
        csrf
    );
    if rows.is_empty() {
        o.raw("<p>No suppressions.</p>");
        return;
    }
    html!(
        o,
        "<p>The newest {} (all of them with <code>mailfleet suppress list</code>).</p>\
         <table id=\"suppression-list\"><tr><th>Address</th><th>Tenant</th><th>Reason</th><th>Note</th>\
         <th>Since</th><th>Expires</th><th></th></tr>",
        rows.len()
    );
    for r in rows {
        html!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.address,
            if r.tenant.is_empty() {
                "all"
            } else {
                r.tenant.as_str()
            },
            r.reason,
            r.note.as_deref().unwrap_or(""),
            time(r.created_at),
            r.expires_at.map(time).unwrap_or_else(|| "never".into()),
            button(
                "/admin/suppressions/remove",
                csrf,
                &[("address", &r.address), ("tenant", &r.tenant)],
                "Remove",
                "unsuppress"
            )
        );
    }
    o.raw("</table>");
}
