//! `/admin` on the API server: one server-rendered page (no JavaScript at all) for operators.
//!
//! It shows lanes, workers, the leader and fence, providers and breakers, pauses, schedules with
//! their last run, the newest dead letters (each with a Replay button) and suppressions (add,
//! remove); pauses can be set and lifted.
//!
//! Protection:
//! - **Login** with the admin token (`MAILFLEET_ADMIN_TOKEN`) at `/admin/login`; the answer is
//!   a session cookie (`__Host-mailfleet_admin`: `Secure`, `Path=/`, `HttpOnly`,
//!   `SameSite=Strict`, 12 h; `MAILFLEET_ADMIN_INSECURE_COOKIE` drops `Secure` for plain-HTTP
//!   development), signed with HMAC-SHA256 keyed by the token, so changing the token ends
//!   every session. Scripts may send `Authorization: Bearer <token>` instead.
//! - **Throttled**: at most 10 token attempts (sign-ins and bearer requests) per minute
//!   across every API replica, counted in Redis before the token is compared.
//! - **Sign-out** is recorded in Redis: the session stops working everywhere at once.
//! - **CSRF**: every action is a POST carrying a token, HMAC of the session under the admin
//!   token, checked in constant time (Bearer requests need none: a browser cannot forge that
//!   header across sites). `SameSite=Strict` is a second line.
//! - Every page: `Content-Security-Policy: default-src 'none'` (inline style only, forms only to
//!   this origin, no framing), `Cache-Control: no-store`, `Referrer-Policy: no-referrer`.
//!
//! The page shows addresses (suppressions) to the operator; nothing here logs one.
//!
//! Files: [`session`] (who may), [`markup`] (HTML whose values are escaped by construction),
//! [`views`] (the page), [`actions`] (the POSTs); here the state, the routes and sign-in.

mod actions;
pub mod markup;
mod session;
mod views;

pub use session::{csrf_for, new_session, valid_session};

use crate::domain::Secret;
use crate::stream;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use markup::{Markup, page};
use session::{authorize, token_matches};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The session cookie without `Secure` (the plain-HTTP opt-out), scoped to `/admin`.
const COOKIE: &str = "mailfleet_admin";
/// The session cookie by default: `Secure`, `Path=/`, host-only (the `__Host-` rules).
const SECURE_COOKIE: &str = "__Host-mailfleet_admin";
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
    /// A `Secure` `__Host-` session cookie (the default; the API is served over HTTPS). False
    /// only with `MAILFLEET_ADMIN_INSECURE_COOKIE`, for plain-HTTP development.
    pub secure_cookie: bool,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin", get(views::index))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/dlq/replay", post(actions::replay))
        .route("/admin/suppressions/add", post(actions::suppress_add))
        .route("/admin/suppressions/remove", post(actions::suppress_remove))
        .route("/admin/pause", post(actions::pause))
        .route("/admin/resume", post(actions::resume))
        .with_state(Arc::new(state))
}

type S = State<Arc<AdminState>>;

async fn login_page() -> Response {
    login_form(StatusCode::OK, "")
}

fn login_form(status: StatusCode, note: &'static str) -> Response {
    page(
        status,
        "mailfleet admin",
        Markup::new().raw(note).raw(
            "<form method=\"post\" action=\"/admin/login\">\
             <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label> \
             <button type=\"submit\">Sign in</button></form>",
        ),
    )
}

async fn login(State(s): S, Form(f): Form<HashMap<String, String>>) -> Response {
    let given = f.get("token").map(String::as_str).unwrap_or("");
    if !session::token_attempt_allowed(&s).await {
        tracing::warn!("admin: a sign-in over the minute's allowance was refused");
        return session::too_many();
    }
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
    let mut r = Redirect::to("/admin").into_response();
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{}={v}; {}",
        session::cookie_name(&s),
        cookie_attributes(&s, SESSION_SECS)
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
    if let Some(r) = authorize(&s, &headers, &f).await {
        return r;
    }
    // Signed out on the server too: the cookie no longer works on any replica, even if the
    // browser (or someone who copied it) keeps it.
    if let Some(sess) = session::cookie(&s, &headers)
        && let Err(e) = session::revoke(&s, sess).await
    {
        tracing::warn!(error.message = %e, "admin: could not record the sign-out");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed out",
            Markup::new().raw("<p>Redis did not record the sign-out. Try again.</p>"),
        );
    }
    let mut r = Redirect::to("/admin/login").into_response();
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{}=; {}",
        session::cookie_name(&s),
        cookie_attributes(&s, 0)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    tracing::info!("admin: signed out");
    r
}

/// The session cookie's attributes: `__Host-` rules (`Secure`, `Path=/`) by default, or
/// `Path=/admin` without `Secure` under the plain-HTTP opt-out.
fn cookie_attributes(s: &AdminState, max_age: i64) -> String {
    let scope = if s.secure_cookie {
        "Path=/; Secure"
    } else {
        "Path=/admin"
    };
    format!("{scope}; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

// ---- the page
