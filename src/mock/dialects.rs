//! The four HTTP dialects, each at its vendor's path, checking the vendor's auth and required
//! fields and answering with the vendor's success and error shapes:
//!
//! | dialect  | path                          | auth                           | job id from             |
//! |----------|-------------------------------|--------------------------------|-------------------------|
//! | sendgrid | `POST /v3/mail/send`          | `Authorization: Bearer`        | each personalization's `custom_args.mailfleet_id`, else the request's |
//! | ses      | `POST /v2/email/outbound-emails` | SigV4 (checked with a secret) | `EmailTags[mailfleet_id]` |
//! | mailgun  | `POST /v3/{domain}/messages`  | Basic `api:<key>`              | `v:mailfleet_id`        |
//! | postmark | `POST /email`, `POST /email/batch` | `X-Postmark-Server-Token` | `Metadata.mailfleet_id` |

//!
//! A SendGrid request may be a batch (up to 1,000 personalizations): it counts as that many
//! emails in the rate window and the stats, and is refused whole, with every fault named, when
//! any personalization fails validation (a recipient at `refused.invalid` is the mock's bad
//! recipient). A Postmark batch (up to 500 messages) is answered 200 with a result per
//! message: `ErrorCode` 406 (inactive recipient) for a recipient at `refused.invalid`, 429 for
//! one at `throttled.invalid`, 0 with its own `MessageID` for the others.

use super::{Answer, Edge, Mock, Verdict};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use serde_json::{Value, json};
use std::time::Duration;

pub fn routes() -> Router<Mock> {
    Router::new()
        .route("/v3/mail/send", post(sendgrid))
        .route("/v2/email/outbound-emails", post(ses))
        .route("/v3/{domain}/messages", post(mailgun))
        .route("/email", post(postmark))
        .route("/email/batch", post(postmark_batch))
}

/// The vendor-shaped answers to a fault verdict.
trait Dialect {
    const NAME: &'static str;
    fn error(status: StatusCode, message: &str) -> Response;
    /// Extra headers of a rate-limit answer.
    fn rate_limited(retry: Duration) -> Response {
        let mut r = Self::error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// Run a well-formed request through the fault settings; `Ok(message id)` when accepted.
async fn admit<D: Dialect>(
    m: &Mock,
    edge: Option<&Edge>,
    job_id: &str,
) -> Result<String, Response> {
    admit_all::<D>(m, edge, 1, &[job_id]).await
}

/// [`admit`] for a request carrying `arrivals` emails (a batch), of which those of `job_ids`
/// are taken if the request is: counted as that many arrivals, accepted or refused together.
async fn admit_all<D: Dialect>(
    m: &Mock,
    edge: Option<&Edge>,
    arrivals: usize,
    job_ids: &[&str],
) -> Result<String, Response> {
    match m.arrive(D::NAME, edge.map(Edge::arrived), arrivals).await {
        Verdict::RateLimited(retry) => Err(D::rate_limited(retry)),
        Verdict::Throttled => Err(D::rate_limited(Duration::from_secs(1))),
        Verdict::Unavailable => Err(D::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
        )),
        Verdict::Accept => match m.accept_all(D::NAME, job_ids) {
            (message_id, Answer::Success) => Ok(message_id),
            (message_id, Answer::Reset) => {
                if let Some(e) = edge {
                    e.reset();
                    // The connection is gone; this answer is never written.
                    std::future::pending::<()>().await;
                }
                Ok(message_id)
            }
            (_, Answer::ServerError(status)) => Err(D::error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "Internal Server Error",
            )),
        },
    }
}

struct SendGrid;
impl Dialect for SendGrid {
    const NAME: &'static str = "sendgrid";
    fn error(status: StatusCode, message: &str) -> Response {
        (
            status,
            Json(json!({ "errors": [{ "message": message, "field": null }] })),
        )
            .into_response()
    }
    fn rate_limited(retry: Duration) -> Response {
        let mut r = Self::error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        let reset = chrono::Utc::now().timestamp() + retry.as_secs_f64().ceil().max(1.0) as i64;
        let h = r.headers_mut();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        if let Ok(v) = HeaderValue::from_str(&reset.to_string()) {
            h.insert("x-ratelimit-reset", v);
        }
        r
    }
}

fn sendgrid_field(status: StatusCode, message: &str, field: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "message": message, "field": field }] })),
    )
        .into_response()
}

async fn sendgrid(
    State(m): State<Mock>,
    edge: Option<Extension<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    m.capture(SendGrid::NAME, "/v3/mail/send", &headers, &body);
    let authed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
    if !authed {
        return SendGrid::error(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return SendGrid::error(StatusCode::BAD_REQUEST, "Bad Request");
    };
    let Some(people) = v["personalizations"].as_array().filter(|p| !p.is_empty()) else {
        return sendgrid_field(
            StatusCode::BAD_REQUEST,
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        );
    };
    if people.len() > 1000 {
        return sendgrid_field(
            StatusCode::BAD_REQUEST,
            "The personalizations field may not have more than 1000 items.",
            "personalizations",
        );
    }
    if v["from"]["email"].as_str().is_none() {
        return sendgrid_field(
            StatusCode::BAD_REQUEST,
            "The from object must be provided for every email send.",
            "from",
        );
    }
    if v["content"].as_array().is_none_or(|a| a.is_empty()) {
        return sendgrid_field(
            StatusCode::BAD_REQUEST,
            "Unless a valid template_id is provided, the content parameter is required.",
            "content",
        );
    }
    // Validation is all-or-nothing, as SendGrid's: every fault is listed, and nothing is sent.
    let shared_subject = v["subject"].as_str().is_some_and(|s| !s.is_empty());
    let mut faults = Vec::new();
    for (i, p) in people.iter().enumerate() {
        let to = p["to"].as_array().filter(|a| !a.is_empty());
        let Some(to) = to else {
            faults.push((
                "The to array is required for all personalization objects".to_owned(),
                format!("personalizations.{i}.to"),
            ));
            continue;
        };
        for (j, r) in to.iter().enumerate() {
            // The mock's one bad recipient: any address at refused.invalid.
            if r["email"]
                .as_str()
                .is_none_or(|e| e.ends_with("@refused.invalid"))
            {
                faults.push((
                    "Does not contain a valid address.".to_owned(),
                    format!("personalizations.{i}.to.{j}.email"),
                ));
            }
        }
        if !shared_subject && p["subject"].as_str().is_none_or(str::is_empty) {
            faults.push((
                "The subject is required.".to_owned(),
                format!("personalizations.{i}.subject"),
            ));
        }
        let subs: usize = p["substitutions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if subs > 10_000 {
            faults.push((
                "The total size of substitutions may not exceed 10,000 bytes per personalization object.".to_owned(),
                format!("personalizations.{i}.substitutions"),
            ));
        }
    }
    if !faults.is_empty() {
        let errors: Vec<Value> = faults
            .into_iter()
            .map(|(message, field)| json!({ "message": message, "field": field }))
            .collect();
        return (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors }))).into_response();
    }
    let top = v["custom_args"]["mailfleet_id"].as_str();
    let ids: Vec<&str> = people
        .iter()
        .map(|p| {
            p["custom_args"]["mailfleet_id"]
                .as_str()
                .or(top)
                .unwrap_or("")
        })
        .collect();
    match admit_all::<SendGrid>(&m, edge.as_deref(), ids.len(), &ids).await {
        Ok(message_id) => (StatusCode::ACCEPTED, [("x-message-id", message_id)]).into_response(),
        Err(r) => r,
    }
}

struct Ses;
impl Ses {
    fn typed(status: StatusCode, kind: &str, message: &str) -> Response {
        let mut r = (status, Json(json!({ "message": message }))).into_response();
        if let Ok(v) = HeaderValue::from_str(kind) {
            r.headers_mut().insert("x-amzn-errortype", v);
        }
        r
    }
}
impl Dialect for Ses {
    const NAME: &'static str = "ses";
    fn error(status: StatusCode, message: &str) -> Response {
        let kind = match status {
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequestsException",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::FORBIDDEN => "SignatureDoesNotMatch",
            s if s.is_server_error() => "InternalFailure",
            _ => "BadRequestException",
        };
        Self::typed(status, kind, message)
    }
    fn rate_limited(_retry: Duration) -> Response {
        Self::typed(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
        )
    }
}

async fn ses(
    State(m): State<Mock>,
    edge: Option<Extension<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = "/v2/email/outbound-emails";
    m.capture(Ses::NAME, path, &headers, &body);
    let signed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential="));
    if !signed {
        return Ses::typed(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    }
    if let Some(secret) = &m.config().ses_secret
        && super::sigv4::verify("POST", path, &headers, &body, secret).is_err()
    {
        return Ses::typed(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return Ses::error(StatusCode::BAD_REQUEST, "Request body is not valid JSON");
    };
    let has_to = v["Destination"]["ToAddresses"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let simple = &v["Content"]["Simple"];
    let has_body =
        simple["Body"]["Text"]["Data"].is_string() || simple["Body"]["Html"]["Data"].is_string();
    if !has_to
        || v["FromEmailAddress"].as_str().is_none()
        || !simple["Subject"]["Data"].is_string()
        || !has_body
    {
        return Ses::error(
            StatusCode::BAD_REQUEST,
            "Destination, FromEmailAddress, Subject and a Body are required",
        );
    }
    let id = v["EmailTags"]
        .as_array()
        .and_then(|tags| {
            tags.iter()
                .find(|t| t["Name"] == "mailfleet_id")
                .and_then(|t| t["Value"].as_str())
        })
        .unwrap_or("");
    match admit::<Ses>(&m, edge.as_deref(), id).await {
        Ok(message_id) => Json(json!({ "MessageId": message_id })).into_response(),
        Err(r) => r,
    }
}

struct Mailgun;
impl Dialect for Mailgun {
    const NAME: &'static str = "mailgun";
    fn error(status: StatusCode, message: &str) -> Response {
        (status, Json(json!({ "message": message }))).into_response()
    }
}

async fn mailgun(
    State(m): State<Mock>,
    Path(domain): Path<String>,
    edge: Option<Extension<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    m.capture(
        Mailgun::NAME,
        &format!("/v3/{domain}/messages"),
        &headers,
        &body,
    );
    use base64::Engine;
    let authed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|creds| creds.starts_with("api:") && creds.len() > 4);
    if !authed {
        return (StatusCode::UNAUTHORIZED, "Forbidden").into_response();
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Mailgun::error(StatusCode::BAD_REQUEST, "expected form fields");
    }
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for required in ["from", "to", "subject"] {
        if get(required).is_none() {
            return Mailgun::error(
                StatusCode::BAD_REQUEST,
                &format!("'{required}' parameter is missing"),
            );
        }
    }
    if get("text").is_none() && get("html").is_none() {
        return Mailgun::error(
            StatusCode::BAD_REQUEST,
            "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified",
        );
    }
    let id = get("v:mailfleet_id").unwrap_or("").to_owned();
    match admit::<Mailgun>(&m, edge.as_deref(), &id).await {
        Ok(message_id) => Json(json!({
            "id": format!("<{message_id}@{domain}>"),
            "message": "Queued. Thank you.",
        }))
        .into_response(),
        Err(r) => r,
    }
}

struct Postmark;
impl Dialect for Postmark {
    const NAME: &'static str = "postmark";
    fn error(status: StatusCode, message: &str) -> Response {
        let code = match status {
            StatusCode::UNAUTHORIZED => 10,
            StatusCode::UNPROCESSABLE_ENTITY => 300,
            _ => 0,
        };
        (
            status,
            Json(json!({ "ErrorCode": code, "Message": message })),
        )
            .into_response()
    }
}

/// Postmark's 401 for a request without a server token.
fn postmark_unauthorized(headers: &HeaderMap) -> Option<Response> {
    let authed = headers
        .get("x-postmark-server-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty());
    (!authed).then(|| {
        Postmark::error(
            StatusCode::UNAUTHORIZED,
            "No Account or Server API tokens were supplied in the HTTP headers. Please add a header for either X-Postmark-Server-Token or X-Postmark-Account-Token.",
        )
    })
}

async fn postmark(
    State(m): State<Mock>,
    edge: Option<Extension<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    m.capture(Postmark::NAME, "/email", &headers, &body);
    if let Some(refused) = postmark_unauthorized(&headers) {
        return refused;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ErrorCode": 402, "Message": "Received invalid JSON input." })),
        )
            .into_response();
    };
    let has_body = v["HtmlBody"].is_string() || v["TextBody"].is_string();
    if v["From"].as_str().is_none() || v["To"].as_str().is_none_or(str::is_empty) || !has_body {
        return Postmark::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid 'From', 'To' or body: a message needs a sender, a recipient and a body.",
        );
    }
    let id = v["Metadata"]["mailfleet_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let to = v["To"].as_str().unwrap_or("").to_owned();
    match admit::<Postmark>(&m, edge.as_deref(), &id).await {
        Ok(message_id) => Json(json!({
            "To": to,
            "SubmittedAt": chrono::Utc::now().to_rfc3339(),
            "MessageID": message_id,
            "ErrorCode": 0,
            "Message": "OK",
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// Postmark's `POST /email/batch`: an array of messages, each answered on its own.
async fn postmark_batch(
    State(m): State<Mock>,
    edge: Option<Extension<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    m.capture(Postmark::NAME, "/email/batch", &headers, &body);
    if let Some(refused) = postmark_unauthorized(&headers) {
        return refused;
    }
    let Ok(Value::Array(messages)) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ErrorCode": 402, "Message": "Received invalid JSON input." })),
        )
            .into_response();
    };
    if messages.len() > 500 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ErrorCode": 410, "Message": "Too many batch messages (500 at most)." })),
        )
            .into_response();
    }
    // Each message's own verdict: None is taken (if the request is).
    let verdicts: Vec<Option<(i64, &str)>> = messages
        .iter()
        .map(|v| {
            let to = v["To"].as_str().unwrap_or("");
            let has_body = v["HtmlBody"].is_string() || v["TextBody"].is_string();
            if v["From"].as_str().is_none() || to.is_empty() || !has_body {
                Some((300, "Invalid 'From', 'To' or body: a message needs a sender, a recipient and a body."))
            } else if to.contains("@refused.invalid") {
                Some((406, "You tried to send to recipient(s) that have been marked as inactive."))
            } else if to.contains("@throttled.invalid") {
                Some((429, "Rate limit exceeded for this recipient."))
            } else {
                None
            }
        })
        .collect();
    let ids: Vec<&str> = messages
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|(m, _)| m["Metadata"]["mailfleet_id"].as_str().unwrap_or(""))
        .collect();
    match admit_all::<Postmark>(&m, edge.as_deref(), messages.len(), &ids).await {
        Ok(batch_id) => {
            let now = chrono::Utc::now().to_rfc3339();
            let mut taken = 0;
            let results: Vec<Value> = messages
                .iter()
                .zip(&verdicts)
                .map(|(msg, v)| match v {
                    Some((code, text)) => json!({ "ErrorCode": code, "Message": text }),
                    None => {
                        taken += 1;
                        json!({
                            "To": msg["To"], "SubmittedAt": now, "ErrorCode": 0, "Message": "OK",
                            "MessageID": format!("{batch_id}-{}", taken - 1),
                        })
                    }
                })
                .collect();
            Json(Value::Array(results)).into_response()
        }
        Err(r) => r,
    }
}
