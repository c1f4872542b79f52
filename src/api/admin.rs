//! `/admin` on the API server: one server-rendered page (no JavaScript at all) for operators.
//!
//! It shows lanes, workers, the leader and fence, providers and breakers, pauses, schedules with
//! their last run, the newest dead letters (each with a Replay button) and suppressions (add,
//! remove); pauses can be set and lifted.
//!
//! Protection:
//! - **Login** with the admin token (`MAILFLEET_ADMIN_TOKEN`) at `/admin/login`; the answer is
//!   a session cookie (`HttpOnly`, `SameSite=Strict`, `Path=/admin`, 12 h; `Secure` with
//!   `MAILFLEET_ADMIN_SECURE_COOKIE`), signed with HMAC-SHA256 keyed by the token, so changing
//!   the token ends every session. Scripts may send `Authorization: Bearer <token>` instead.
//! - **CSRF**: every action is a POST carrying a token, HMAC of the session under the admin
//!   token, checked in constant time (Bearer requests need none: a browser cannot forge that
//!   header across sites). `SameSite=Strict` is a second line.
//! - Every page: `Content-Security-Policy: default-src 'none'` (inline style only, forms only to
//!   this origin, no framing), `Cache-Control: no-store`, `Referrer-Policy: no-referrer`.
//!
//! The page shows addresses (suppressions) to the operator; nothing here logs one.

use crate::cluster::{self, Snapshot};
use crate::config::Secret;
use crate::dlq::{self, DeadEntry};
use crate::domain::{Address, Lane};
use crate::store::schedules::{self, Run, Schedule};
use crate::store::suppressions::{self, Suppression};
use crate::stream::{self, pause::Scope};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

const COOKIE: &str = "mailfleet_admin";
const SESSION_SECS: i64 = 12 * 3600;
/// Rows shown per list.
const SHOWN: usize = 50;
/// Replays a dead letter may have had before the page refuses another (as `dlq replay`).
const MAX_REPLAYS: u32 = 3;

/// What the admin page needs.
#[derive(Clone)]
pub struct AdminState {
    pub pg: PgPool,
    pub redis: crate::stream::Pool,
    pub keys: stream::Keys,
    pub token: Secret,
    /// Mark the session cookie `Secure` (serve the API over HTTPS then).
    pub secure_cookie: bool,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/dlq/replay", post(replay))
        .route("/admin/suppressions/add", post(suppress_add))
        .route("/admin/suppressions/remove", post(suppress_remove))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .with_state(Arc::new(state))
}

type S = State<Arc<AdminState>>;

// ---- sessions and CSRF

fn mac(token: &Secret, parts: &[&str]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()).expect("HMAC takes any key");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"|");
    }
    m
}

/// A new session value: `<expires>.<nonce>.<signature>`.
pub fn new_session(token: &Secret, now: i64) -> String {
    let exp = (now + SESSION_SECS).to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let sig = hex::encode(
        mac(token, &["session", &exp, &nonce])
            .finalize()
            .into_bytes(),
    );
    format!("{exp}.{nonce}.{sig}")
}

/// Whether `v` is a session this token signed that has not expired.
pub fn valid_session(token: &Secret, v: &str, now: i64) -> bool {
    let mut it = v.splitn(3, '.');
    let (Some(exp), Some(nonce), Some(sig)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let Ok(e) = exp.parse::<i64>() else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    e >= now
        && mac(token, &["session", exp, nonce])
            .verify_slice(&sig)
            .is_ok()
}

/// The CSRF token of a session.
pub fn csrf_for(token: &Secret, session: &str) -> String {
    hex::encode(mac(token, &["csrf", session]).finalize().into_bytes())
}

fn csrf_ok(token: &Secret, session: &str, given: &str) -> bool {
    hex::decode(given).is_ok_and(|g| mac(token, &["csrf", session]).verify_slice(&g).is_ok())
}

/// Constant-time equality of a presented token and the admin token: HMACs of both under a
/// fixed key, compared by `verify_slice`.
fn token_matches(token: &Secret, given: &str) -> bool {
    let digest = |b: &[u8]| {
        let mut m =
            Hmac::<Sha256>::new_from_slice(b"mailfleet-admin-token").expect("HMAC takes any key");
        m.update(b);
        m
    };
    let expected = digest(token.expose().as_bytes()).finalize().into_bytes();
    digest(given.as_bytes()).verify_slice(&expected).is_ok()
}

enum Auth {
    Session(String),
    Bearer,
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn authenticate(s: &AdminState, headers: &HeaderMap) -> Option<Auth> {
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return token_matches(&s.token, b.trim()).then_some(Auth::Bearer);
    }
    let c = cookie(headers)?;
    valid_session(&s.token, c, Utc::now().timestamp()).then(|| Auth::Session(c.to_owned()))
}

/// The gate of every action: an admin, and for a browser session the right CSRF token.
/// `Some` is the refusal to answer with.
fn authorize(
    s: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Response> {
    match authenticate(s, headers) {
        None => Some(page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "<p><a href=\"/admin/login\">Sign in</a></p>",
        )),
        Some(Auth::Bearer) => None,
        Some(Auth::Session(sess)) => {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if csrf_ok(&s.token, &sess, given) {
                None
            } else {
                tracing::warn!("admin: an action without a valid CSRF token was refused");
                Some(page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "<p>The form's CSRF token is missing or wrong. Reload the page and try again.</p>",
                ))
            }
        }
    }
}

// ---- rendering helpers

/// HTML-escape text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}\
th{background:#f4f4f4}.num{text-align:right}.flash{background:#eef7ee;border:1px solid #9c9;padding:.4em}\
.bad{color:#a00}.ok{color:#070}form.inline{display:inline}input,select{font:inherit}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let mut r = (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{t} · mailfleet</title><style>{STYLE}</style></head>\
             <body><h1>{t}</h1>{body}</body></html>",
            t = esc(title)
        )),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A POST button: hidden fields (escaped), the CSRF token, one button.
fn button(action: &str, csrf: &str, fields: &[(&str, &str)], label: &str, class: &str) -> String {
    let mut o = format!(
        "<form class=\"inline {class}\" method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(csrf)
    );
    for (k, v) in fields {
        let _ = write!(
            o,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        );
    }
    let _ = write!(o, "<button type=\"submit\">{}</button></form>", esc(label));
    o
}

/// What an action did, shown once after its redirect (`/admin?done=<code>`): fixed texts only,
/// so a crafted link cannot put words on the page.
fn flash(code: &str) -> Option<&'static str> {
    Some(match code {
        "replayed" => "Dead letter replayed: its job is back on its stream.",
        "final" => "Not replayed: the job is already final in Postgres.",
        "refused" => "Not replayed: replayed too often already, or nothing to replay.",
        "missing" => "That dead letter is gone (replayed or purged meanwhile).",
        "suppression-added" => "Suppression added.",
        "unsuppressed" => "Suppression removed.",
        "no-such-suppression" => "No such suppression.",
        "bad-address" => "Not added: that is not a valid address.",
        "paused" => "Paused: every worker honours it within a second.",
        "resumed" => "Resumed.",
        "not-paused" => "That was not paused.",
        "bad-pause" => "Not paused: choose a scope and a valid name (a lane is tx or bulk).",
        _ => return None,
    })
}

fn done(code: &str) -> Response {
    Redirect::to(&format!("/admin?done={code}")).into_response()
}

fn failed(doing: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error.message = %e, "admin: {doing} failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Failed",
        &format!(
            "<p class=\"bad\">{} failed: {}</p><p><a href=\"/admin\">Back</a></p>",
            esc(doing),
            esc(&e.to_string())
        ),
    )
}

// ---- login

async fn login_page() -> Response {
    login_form(StatusCode::OK, "")
}

fn login_form(status: StatusCode, note: &str) -> Response {
    page(
        status,
        "mailfleet admin",
        &format!(
            "{note}<form method=\"post\" action=\"/admin/login\">\
             <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label> \
             <button type=\"submit\">Sign in</button></form>"
        ),
    )
}

async fn login(State(s): S, Form(f): Form<HashMap<String, String>>) -> Response {
    let given = f.get("token").map(String::as_str).unwrap_or("");
    if given.is_empty() || !token_matches(&s.token, given) {
        tracing::warn!("admin: a sign-in with a wrong token was refused");
        // Slow down guessing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return login_form(
            StatusCode::UNAUTHORIZED,
            "<p class=\"bad\">Wrong token.</p>",
        );
    }
    let v = new_session(&s.token, Utc::now().timestamp());
    let secure = if s.secure_cookie { "; Secure" } else { "" };
    let mut r = Redirect::to("/admin").into_response();
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{COOKIE}={v}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    tracing::info!("admin: signed in");
    r
}

async fn logout(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f) {
        return r;
    }
    let mut r = Redirect::to("/admin/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "mailfleet_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

// ---- the page

#[derive(serde::Deserialize)]
struct IndexQuery {
    done: Option<String>,
}

async fn index(State(s): S, headers: HeaderMap, Query(q): Query<IndexQuery>) -> Response {
    let csrf = match authenticate(&s, &headers) {
        None => return Redirect::to("/admin/login").into_response(),
        Some(Auth::Session(sess)) => csrf_for(&s.token, &sess),
        Some(Auth::Bearer) => String::new(),
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
    let mut o = String::new();
    if let Some(f) = q.done.as_deref().and_then(flash) {
        let _ = write!(o, "<p class=\"flash\">{}</p>", esc(f));
    }
    let _ = write!(
        o,
        "<div>Updated {} · {}</div>",
        time(Utc::now()),
        button("/admin/logout", &csrf, &[], "Sign out", "logout")
    );
    match &snap {
        Ok(snap) => cluster_sections(&mut o, snap, &csrf),
        Err(e) => {
            let _ = write!(
                o,
                "<h2>Cluster</h2><p class=\"bad\">Unavailable: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    o.push_str("<h2>Schedules</h2>");
    match &sched {
        Ok(rows) => schedules_section(&mut o, rows),
        Err(e) => {
            let _ = write!(o, "<p class=\"bad\">Unavailable: {}</p>", esc(e));
        }
    }
    let _ = write!(o, "<h2 id=\"dead\">Dead letters</h2>");
    match &dead {
        Ok(rows) => dead_section(&mut o, rows, &csrf),
        Err(e) => {
            let _ = write!(o, "<p class=\"bad\">Unavailable: {}</p>", esc(e));
        }
    }
    o.push_str("<h2 id=\"suppressions\">Suppressions</h2>");
    match &supp {
        Ok(rows) => suppressions_section(&mut o, rows, &csrf),
        Err(e) => {
            let _ = write!(
                o,
                "<p class=\"bad\">Unavailable: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    page(StatusCode::OK, "mailfleet admin", &o)
}

fn cluster_sections(o: &mut String, s: &Snapshot, csrf: &str) {
    o.push_str(
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
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td>{}</td></tr>",
            esc(lane),
            d.length,
            d.pending,
            d.lag,
            d.oldest_pending_ms as f64 / 1000.0,
            esc(&recent)
        );
    }
    let _ = write!(
        o,
        "</table><p>Delayed <b>{}</b> · dead letters <b>{}</b> · workers alive <b>{}</b></p>",
        s.depth.delayed,
        s.depth.dead,
        s.depth.workers.len()
    );

    o.push_str(
        "<h2>Workers</h2><table id=\"workers\"><tr><th>Worker</th><th>Last report</th></tr>",
    );
    let now_ms = Utc::now().timestamp_millis();
    for (w, at) in &s.depth.workers {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{:.1} s ago</td></tr>",
            esc(w),
            (now_ms - at).max(0) as f64 / 1000.0
        );
    }
    o.push_str("</table>");

    let leader = match &s.lease {
        Some((owner, ttl)) => format!("{} (lease {} ms left)", esc(owner), ttl.as_millis()),
        None => "<span class=\"bad\">none</span>".into(),
    };
    let _ = write!(
        o,
        "<h2>Scheduler</h2><p id=\"leader\">Leader {leader} · fence token <b>{}</b> (last written by {})</p>",
        s.fence.0,
        esc(s.fence.1.as_deref().unwrap_or("-"))
    );

    o.push_str(
        "<h2>Providers</h2><table id=\"providers\"><tr><th>Provider</th><th>Breaker</th>\
         <th>Workers reporting it not closed</th></tr>",
    );
    for (provider, by_worker) in &s.depth.breakers {
        let worst = by_worker.values().copied().max().unwrap_or(0);
        let open = by_worker.values().filter(|&&v| v > 0).count();
        let class = if worst == 0 { "ok" } else { "bad" };
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{open} of {}</td></tr>",
            esc(provider),
            cluster::breaker_name(worst),
            by_worker.len()
        );
    }
    o.push_str("</table>");

    o.push_str("<h2>Pauses</h2>");
    if s.depth.paused.is_empty() {
        o.push_str("<p>Nothing is paused.</p>");
    } else {
        o.push_str("<table id=\"pauses\"><tr><th>Paused</th><th>Since</th><th></th></tr>");
        for (field, since) in &s.depth.paused {
            let (scope, name) = field.split_once(':').unwrap_or((field.as_str(), ""));
            let since = DateTime::<Utc>::from_timestamp_millis(*since)
                .map(time)
                .unwrap_or_default();
            let _ = write!(
                o,
                "<tr><td>{} {}</td><td>{}</td><td>{}</td></tr>",
                esc(scope),
                esc(name),
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
        o.push_str("</table>");
    }
    let _ = write!(
        o,
        "<form method=\"post\" action=\"/admin/pause\" class=\"pause\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <select name=\"scope\"><option>lane</option><option>provider</option><option>tenant</option></select> \
         <input name=\"name\" placeholder=\"bulk, a provider or a tenant\" required maxlength=\"100\"> \
         <button type=\"submit\">Pause</button></form>",
        esc(csrf)
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

fn schedules_section(o: &mut String, rows: &[(Schedule, Option<Run>)]) {
    if rows.is_empty() {
        o.push_str("<p>No schedules.</p>");
        return;
    }
    o.push_str(
        "<table id=\"schedules\"><tr><th>Schedule</th><th>Cron</th><th>Audience</th>\
         <th>State</th><th>Next tick</th><th>Last run</th></tr>",
    );
    for (s, last) in rows {
        let last = match last {
            Some(r) => format!(
                "{} {} ({}/{} enqueued)",
                time(r.tick),
                esc(&r.status),
                r.enqueued,
                r.total
            ),
            None => "never".into(),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.cron),
            esc(&s.timezone),
            esc(&s.audience),
            if s.enabled { "enabled" } else { "paused" },
            time(s.next_tick),
            last
        );
    }
    o.push_str("</table>");
}

fn dead_section(o: &mut String, rows: &[DeadEntry], csrf: &str) {
    if rows.is_empty() {
        o.push_str("<p>No dead letters.</p>");
        return;
    }
    let _ = write!(
        o,
        "<p>The newest {} (all of them with <code>mailfleet dlq list</code>).</p>\
         <table id=\"dead-letters\"><tr><th>Dead at</th><th>Reason</th><th>Class</th><th>Lane</th>\
         <th>Job</th><th>Attempts</th><th>Replays</th><th>Error</th><th></th></tr>",
        rows.len()
    );
    for e in rows {
        let error: String = e.error.chars().take(120).collect();
        let partition = e.partition.to_string();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            e.dead_at.map(time).unwrap_or_default(),
            esc(&e.reason),
            esc(&e.class),
            esc(&e.lane),
            esc(e.job_id.as_deref().unwrap_or("-")),
            esc(&e.attempts),
            e.replays,
            esc(&error),
            button(
                "/admin/dlq/replay",
                csrf,
                &[("partition", &partition), ("id", &e.dead_id)],
                "Replay",
                "replay"
            )
        );
    }
    o.push_str("</table>");
}

fn suppressions_section(o: &mut String, rows: &[Suppression], csrf: &str) {
    let _ = write!(
        o,
        "<form method=\"post\" action=\"/admin/suppressions/add\" class=\"suppress\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input name=\"address\" type=\"email\" placeholder=\"address\" required maxlength=\"254\"> \
         <input name=\"tenant\" placeholder=\"tenant (empty: all)\" maxlength=\"100\"> \
         <input name=\"note\" placeholder=\"note\" maxlength=\"200\"> \
         <button type=\"submit\">Suppress</button></form>",
        esc(csrf)
    );
    if rows.is_empty() {
        o.push_str("<p>No suppressions.</p>");
        return;
    }
    let _ = write!(
        o,
        "<p>The newest {} (all of them with <code>mailfleet suppress list</code>).</p>\
         <table id=\"suppression-list\"><tr><th>Address</th><th>Tenant</th><th>Reason</th><th>Note</th>\
         <th>Since</th><th>Expires</th><th></th></tr>",
        rows.len()
    );
    for r in rows {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.address),
            if r.tenant.is_empty() {
                "all".into()
            } else {
                esc(&r.tenant)
            },
            esc(&r.reason),
            esc(r.note.as_deref().unwrap_or("")),
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
    o.push_str("</table>");
}

// ---- actions

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map(|s| s.trim()).unwrap_or("")
}

async fn replay(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f) {
        return r;
    }
    let (Ok(partition), id) = (field(&f, "partition").parse::<u16>(), field(&f, "id")) else {
        return done("missing");
    };
    if partition >= s.keys.partitions() || id.is_empty() {
        return done("missing");
    }
    let mut conn = match s.redis.get().await {
        Ok(c) => c,
        Err(e) => return failed("Replay", e),
    };
    let entry = match dlq::get(&mut *conn, &s.keys, partition, id).await {
        Ok(Some(e)) => e,
        Ok(None) => return done("missing"),
        Err(e) => return failed("Replay", e),
    };
    match dlq::replay(&mut *conn, &s.pg, &s.keys, &[entry], MAX_REPLAYS, 100).await {
        Ok(r) => {
            tracing::info!(
                replayed = r.replayed,
                refused = r.refused,
                already_final = r.already_final,
                "admin: dead letter replay"
            );
            done(if r.replayed > 0 {
                "replayed"
            } else if r.already_final > 0 {
                "final"
            } else if r.refused > 0 {
                "refused"
            } else {
                "missing"
            })
        }
        Err(e) => failed("Replay", e),
    }
}

async fn suppress_add(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f) {
        return r;
    }
    let Ok(addr) = Address::parse(field(&f, "address")) else {
        return done("bad-address");
    };
    let note = field(&f, "note");
    let row = Suppression {
        address: addr.as_str().to_lowercase(),
        tenant: field(&f, "tenant").chars().take(100).collect(),
        reason: "manual".into(),
        note: Some(if note.is_empty() {
            "admin page".into()
        } else {
            note.chars().take(200).collect()
        }),
        expires_at: None,
        created_at: Utc::now(),
    };
    match suppressions::add(&s.pg, &[row]).await {
        Ok(_) => {
            tracing::info!("admin: suppression added");
            done("suppression-added")
        }
        Err(e) => failed("Adding the suppression", e),
    }
}

async fn suppress_remove(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f) {
        return r;
    }
    match suppressions::remove(&s.pg, field(&f, "address"), field(&f, "tenant")).await {
        Ok(true) => {
            tracing::info!("admin: suppression removed");
            done("unsuppressed")
        }
        Ok(false) => done("no-such-suppression"),
        Err(e) => failed("Removing the suppression", e),
    }
}

/// A scope and name from a pause form, checked (a lane must be one).
fn pause_target(f: &HashMap<String, String>) -> Option<(Scope, String)> {
    let name = field(f, "name");
    if name.is_empty()
        || name.len() > 100
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return None;
    }
    let scope = match field(f, "scope") {
        "lane" => {
            name.parse::<Lane>().ok()?;
            Scope::Lane
        }
        "provider" => Scope::Provider,
        "tenant" => Scope::Tenant,
        _ => return None,
    };
    Some((scope, name.to_owned()))
}

async fn pause(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    set_pause(&s, &headers, &f, true).await
}

async fn resume(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    set_pause(&s, &headers, &f, false).await
}

async fn set_pause(
    s: &AdminState,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
    on: bool,
) -> Response {
    if let Some(r) = authorize(s, headers, f) {
        return r;
    }
    let Some((scope, name)) = pause_target(f) else {
        return done("bad-pause");
    };
    let mut conn = match s.redis.get().await {
        Ok(c) => c,
        Err(e) => return failed("Pausing", e),
    };
    let r = if on {
        stream::pause::set(&mut *conn, &s.keys, scope, &name).await
    } else {
        stream::pause::clear(&mut *conn, &s.keys, scope, &name).await
    };
    match r {
        Ok(changed) => {
            tracing::info!(scope = scope.as_str(), on, "admin: pause changed");
            done(match (on, changed) {
                (true, _) => "paused",
                (false, true) => "resumed",
                (false, false) => "not-paused",
            })
        }
        Err(e) => failed(if on { "Pausing" } else { "Resuming" }, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_until_they_expire_and_not_under_another_token() {
        let t = Secret::new("admin-token");
        let v = new_session(&t, 1_000);
        assert!(valid_session(&t, &v, 1_000 + SESSION_SECS));
        assert!(!valid_session(&t, &v, 1_001 + SESSION_SECS), "expired");
        assert!(
            !valid_session(&Secret::new("other"), &v, 1_000),
            "another token"
        );
        let (exp, rest) = v.split_once('.').unwrap();
        let longer = format!("{}.{rest}", exp.parse::<i64>().unwrap() + 1_000_000);
        assert!(!valid_session(&t, &longer, 1_000), "an extended expiry");
        assert!(!valid_session(&t, "garbage", 1_000));
        let csrf = csrf_for(&t, &v);
        assert!(csrf_ok(&t, &v, &csrf));
        assert!(
            !csrf_ok(&t, &new_session(&t, 1_000), &csrf),
            "another session"
        );
        assert!(!csrf_ok(&t, &v, ""));
        assert!(token_matches(&t, "admin-token"));
        assert!(!token_matches(&t, "admin-toke"));
        assert!(!token_matches(&t, ""));
    }

    #[test]
    fn everything_shown_is_escaped_and_flashes_are_fixed_texts() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        let b = button("/admin/x", "c\"srf", &[("id", "1\"><b>")], "Go", "k");
        assert!(!b.contains("\"><b>"), "{b}");
        assert_eq!(flash("<b>hi</b>"), None);
        assert!(flash("replayed").is_some());
    }

    #[test]
    fn pause_forms_are_checked() {
        let f = |scope: &str, name: &str| {
            HashMap::from([
                ("scope".to_owned(), scope.to_owned()),
                ("name".to_owned(), name.to_owned()),
            ])
        };
        assert_eq!(
            pause_target(&f("lane", "bulk")),
            Some((Scope::Lane, "bulk".into()))
        );
        assert_eq!(pause_target(&f("lane", "nope")), None);
        assert_eq!(
            pause_target(&f("tenant", "acme")),
            Some((Scope::Tenant, "acme".into()))
        );
        assert_eq!(pause_target(&f("tenant", "a:b")), None);
        assert_eq!(pause_target(&f("tenant", "")), None);
        assert_eq!(pause_target(&f("everything", "x")), None);
    }
}
