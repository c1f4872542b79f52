//! The ingest API's routes (`mailfleet api`): sending (`ingest.rs`) and one email's status and
//! cancel (`emails.rs`), behind the bearer-key check and the JSON error shape.

use super::emails;
use super::ingest::{ApiState, authorize, create, create_batch, json_errors};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

pub fn router(state: ApiState) -> Router {
    let single_limit = state.max_payload + 4096;
    let batch_limit = (state.max_payload + 4096).saturating_mul(8).max(16 << 20);
    Router::new()
        .route(
            "/v1/emails",
            post(create).layer(DefaultBodyLimit::max(single_limit)),
        )
        .route(
            "/v1/emails/batch",
            post(create_batch).layer(DefaultBodyLimit::max(batch_limit)),
        )
        .route("/v1/emails/{id}", get(emails::show).delete(emails::cancel))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}
