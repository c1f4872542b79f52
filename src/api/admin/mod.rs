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
