//! `GET/POST /v1/unsubscribe/{token}`: the target of the List-Unsubscribe links bulk email
//! carries. POST (what mail clients send for one-click, RFC 8058) unsubscribes: the address is
//! suppressed (reason `unsubscribe`, for the token's tenant or everyone) and, for scheduled
//! email, leaves the schedule's audience. GET shows a page with the button that POSTs, so a
//! link scanner fetching the URL unsubscribes nobody. A tampered link answers 400, an expired
//! one 410; neither changes anything.

use crate::config::Secret;
use crate::store::{audiences, suppressions};
use crate::unsubscribe::{self, Invalid};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

#[derive(Clone)]
struct Unsub {
    pg: PgPool,
    secret: Secret,
}

pub fn router(pg: PgPool, secret: Secret) -> Router {
    Router::new()
        .route("/v1/unsubscribe/{token}", get(page).post(apply))
        .with_state(Unsub { pg, secret })
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        )),
    )
        .into_response()
}

fn refused(e: Invalid) -> Response {
    match e {
        Invalid::Tampered => html(
            StatusCode::BAD_REQUEST,
            "Invalid link",
            "<p>This unsubscribe link is not valid.</p>",
        ),
        Invalid::Expired => html(
            StatusCode::GONE,
            "Link expired",
            "<p>This unsubscribe link has expired.</p>",
        ),
    }
}

async fn page(State(s): State<Unsub>, Path(token): Path<String>) -> Response {
    let now = chrono::Utc::now().timestamp();
    match unsubscribe::verify(&s.secret, &token, now) {
        // The token is base64url and '.', safe inside an attribute.
        Ok(_) => html(
            StatusCode::OK,
            "Unsubscribe",
            &format!(
                "<form method=\"post\" action=\"/v1/unsubscribe/{token}\">\
                 <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
                 <button type=\"submit\">Unsubscribe</button></form>"
            ),
        ),
        Err(e) => refused(e),
    }
}

async fn apply(State(s): State<Unsub>, Path(token): Path<String>) -> Response {
    let now = chrono::Utc::now().timestamp();
    let c = match unsubscribe::verify(&s.secret, &token, now) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let row = suppressions::Suppression {
        address: c.address.clone(),
        tenant: c.tenant.clone().unwrap_or_default(),
        reason: "unsubscribe".into(),
        note: Some("one-click unsubscribe".into()),
        expires_at: None,
        created_at: chrono::Utc::now(),
    };
    let result = async {
        suppressions::add(&s.pg, &[row]).await?;
        if let Some(sid) = c.schedule_id {
            audiences::unsubscribe_from_schedule(&s.pg, sid, &c.address).await?;
        }
        Ok::<_, crate::store::StoreError>(())
    }
    .await;
    match result {
        Ok(()) => html(
            StatusCode::OK,
            "Unsubscribed",
            "<p>You will not receive these emails any more.</p>",
        ),
        Err(e) => {
            tracing::warn!(error.message = %e, "unsubscribe failed");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "<p>Please try again in a minute.</p>",
            )
        }
    }
}
