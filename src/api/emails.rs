//! One email over HTTP: `GET /v1/emails/{id}` (its status) and `DELETE /v1/emails/{id}`
//! (cancel it while it still waits). Scoped to the key's tenant: another tenant's email is not
//! found, not forbidden, so its existence is not told.

use super::ingest::{ApiState, Principal, may, problem};
use crate::store::emails::{self, operate};
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub(super) async fn show(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = may(who.read, "read emails") {
        return *r;
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match emails::status(&s.pg, id).await {
        Ok(Some(st)) if who.tenant.is_none() || st.tenant == who.tenant => Json(st).into_response(),
        Ok(_) => *problem(StatusCode::NOT_FOUND, "no such email", None),
        Err(e) => {
            tracing::error!(error.message = %e, "status lookup failed");
            *unavailable()
        }
    }
}

/// Cancel: 200 `{"id", "status": "cancelled"}`; 409 with the status when it is being sent or
/// final already; 404 when there is no such email for this key.
pub(super) async fn cancel(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = may(who.send, "cancel emails") {
        return *r;
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match operate::cancel(&s.pg, id, who.tenant.as_deref()).await {
        Ok(operate::Cancel::Cancelled) => {
            Json(json!({ "id": id, "status": "cancelled" })).into_response()
        }
        Ok(operate::Cancel::NotFound) => *problem(StatusCode::NOT_FOUND, "no such email", None),
        Ok(operate::Cancel::Too(status)) => *problem(
            StatusCode::CONFLICT,
            "the email no longer waits: only a queued or retrying email can be cancelled",
            Some(json!({ "status": status })),
        ),
        Err(e) => {
            tracing::error!(error.message = %e, "cancel failed");
            *unavailable()
        }
    }
}

fn parse_id(id: &str) -> Result<uuid::Uuid, super::ingest::Reject> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| problem(StatusCode::BAD_REQUEST, "id is not a UUID", None))
}

fn unavailable() -> super::ingest::Reject {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "database unavailable",
        None,
    )
}
