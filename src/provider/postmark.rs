//! Postmark `POST /email`: the server token in `X-Postmark-Server-Token`, JSON body, on a
//! message stream (`outbound` unless configured). A 200 answer carries `MessageID` and
//! `ErrorCode: 0`; errors come as 422 (or 401) with a numeric `ErrorCode`, which decides the
//! class. The job id travels in `Metadata.mailfleet_id`, returned with every webhook.
//!
//! Bulk sends may share one `POST /email/batch` ([`super::batch`]): up to 500 messages, each
//! complete in itself, answered 200 with one result per message, each with its own
//! `ErrorCode` (0 sent, 406 inactive recipient, ...), so each email gets its own fate.

use super::batch::{BatchDialect, Part, PartResult};
use super::{
    Accepted, ErrorClass, Message, MessageIdFrom, NameValue, Provider, SendError, exchange,
};
use crate::config::{ProviderConfig, Secret};
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Postmark {
    name: String,
    url: String,
    batch_url: String,
    token: Secret,
    stream: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl Postmark {
    pub fn new(c: &ProviderConfig, client: reqwest::Client) -> Self {
        Postmark {
            name: c.name.clone(),
            url: format!("{}/email", c.base_url.trim_end_matches('/')),
            batch_url: format!("{}/email/batch", c.base_url.trim_end_matches('/')),
            token: c.api_key.clone(),
            stream: c
                .message_stream
                .clone()
                .unwrap_or_else(|| "outbound".into()),
            timeout: Duration::from_millis(c.timeout_ms),
            client,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Request<'a> {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    cc: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    bcc: String,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    html_body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<NameValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    metadata: BTreeMap<&'static str, String>,
    message_stream: &'a str,
}

pub(crate) fn request<'a>(m: &Message<'a>, stream: &'a str) -> Request<'a> {
    let e = m.email;
    let join = |v: &[crate::domain::Mailbox]| {
        v.iter()
            .map(|b| b.to_header())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Request {
        from: e.from.to_header(),
        to: join(&e.to),
        cc: join(&e.cc),
        bcc: join(&e.bcc),
        subject: &m.rendered.subject,
        html_body: m.rendered.html.as_deref(),
        text_body: m.rendered.text.as_deref(),
        reply_to: e.reply_to.as_ref().map(|b| b.to_header()),
        headers: e
            .headers
            .iter()
            .map(|(k, v)| NameValue {
                name: k.as_str(),
                value: v,
            })
            .collect(),
        // Postmark keeps one tag per message.
        tag: e.tags.first().map(String::as_str),
        metadata: BTreeMap::from([("mailfleet_id", m.job_id.to_string())]),
        message_stream: stream,
    }
}

/// Postmark's documented API error codes, then the HTTP status.
pub fn classify(status: u16, error_code: Option<i64>) -> ErrorClass {
    match error_code {
        // 10 bad or missing token, 405 not allowed to send (out of credits), 412/413 account
        // pending approval, 1235 message stream not found.
        Some(10 | 405 | 412 | 413 | 1235) => ErrorClass::QuotaAuth,
        // 300 invalid email request, 400/401 sender signature missing or unconfirmed,
        // 402/403/409 bad JSON, 406 inactive recipient, 410 too many messages, 411 attachment.
        Some(300 | 400 | 401 | 402 | 403 | 406 | 409 | 410 | 411) => ErrorClass::Permanent,
        _ => super::classify_status(status),
    }
}

impl Provider for Postmark {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let req = self
                .client
                .post(&self.url)
                .header("X-Postmark-Server-Token", self.token.expose())
                .header("Accept", "application/json")
                .timeout(self.timeout)
                .json(&request(&msg, &self.stream));
            exchange(
                req,
                "postmark",
                MessageIdFrom::Json("MessageID"),
                |status, _, body| {
                    let code = serde_json::from_str::<serde_json::Value>(body)
                        .ok()
                        .and_then(|v| v.get("ErrorCode").and_then(|c| c.as_i64()));
                    (
                        classify(status, code),
                        code.map(|c| format!("ErrorCode {c}")),
                    )
                },
            )
            .await
        })
    }
}

/// Most messages Postmark takes in one batch request.
pub const MAX_BATCH: usize = 500;
/// Most bytes of messages in one batch request (Postmark takes 50 MB).
pub const MAX_BATCH_BYTES: usize = 40 << 20;

/// One message's result in a batch answer: its own error code decides, as a single send's
/// would (a per-message 429 is that message's own throttling: retried alone).
fn message_result(r: &serde_json::Value) -> PartResult {
    let code = r["ErrorCode"].as_i64();
    if code == Some(0) {
        return PartResult::Done(Ok(Accepted {
            message_id: r["MessageID"].as_str().map(str::to_owned),
            http_status: 200,
        }));
    }
    let status = if code == Some(429) { 429 } else { 422 };
    let text = r["Message"].as_str().unwrap_or("");
    PartResult::Done(Err(SendError {
        class: classify(status, code.filter(|&c| c != 429)),
        message: format!(
            "postmark answered ErrorCode {} in a batch: {}",
            code.unwrap_or(-1),
            super::scrub(text)
        ),
        http_status: Some(status),
        retry_after: None,
    }))
}

/// Each part's fate from a batch request's answer: a 200's array of results, one per message
/// in order, or a refusal of the whole request.
pub(crate) fn batch_results(n: usize, answer: Result<&str, SendError>) -> Vec<PartResult> {
    match answer {
        Ok(body) => {
            let results: Vec<serde_json::Value> = serde_json::from_str(body).unwrap_or_default();
            (0..n)
                .map(|i| match results.get(i) {
                    Some(r) => message_result(r),
                    // Taken (200) but unreadable: the email may be out.
                    None => PartResult::Done(Err(SendError {
                        class: ErrorClass::Ambiguous,
                        message: "postmark's batch answer did not cover this message".into(),
                        http_status: Some(200),
                        retry_after: None,
                    })),
                })
                .collect()
        }
        // Too many or too big together (ErrorCode 410, HTTP 413): each goes alone.
        Err(e) if n > 1 && (e.http_status == Some(413) || e.message.contains("ErrorCode 410")) => {
            vec![PartResult::Resend { alone: true }; n]
        }
        Err(e) => vec![PartResult::Done(Err(e)); n],
    }
}

impl BatchDialect for Postmark {
    fn part(&self, msg: &Message<'_>) -> Option<Part> {
        // Every message of a Postmark batch is complete in itself: they all share a request.
        Some(Part {
            key: 0,
            shared: "".into(),
            body: serde_json::to_string(&request(msg, &self.stream)).ok()?,
        })
    }

    fn send_parts<'a>(
        &'a self,
        _shared: &'a str,
        parts: &'a [String],
    ) -> BoxFuture<'a, Vec<PartResult>> {
        Box::pin(async move {
            let body = super::batch::join_parts("[", parts, "]");
            let resp = self
                .client
                .post(&self.batch_url)
                .header("X-Postmark-Server-Token", self.token.expose())
                .header("Accept", "application/json")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(self.timeout)
                .body(body)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => return batch_results(parts.len(), Err(super::classify_transport(&e))),
            };
            let status = resp.status().as_u16();
            let ok = resp.status().is_success();
            let retry = super::retry_after(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            if ok {
                return batch_results(parts.len(), Ok(&text));
            }
            let code = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("ErrorCode").and_then(|c| c.as_i64()));
            let kind = code.map(|c| format!(" ErrorCode {c}")).unwrap_or_default();
            let e = SendError {
                class: classify(status, code),
                message: format!("postmark answered {status}{kind}: {}", super::scrub(&text)),
                http_status: Some(status),
                retry_after: retry,
            };
            batch_results(parts.len(), Err(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_gives_each_message_its_own_fate() {
        let body = r#"[{"ErrorCode":0,"Message":"OK","MessageID":"m-0"},
            {"ErrorCode":406,"Message":"You tried to send to recipient(s) that have been marked as inactive."},
            {"ErrorCode":429,"Message":"Rate limit exceeded"}]"#;
        let r = batch_results(4, Ok(body));
        let PartResult::Done(Ok(a)) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(a.message_id.as_deref(), Some("m-0"));
        let PartResult::Done(Err(e)) = &r[1] else {
            panic!("{r:?}")
        };
        assert_eq!((e.class, e.http_status), (ErrorClass::Permanent, Some(422)));
        assert!(e.message.contains("ErrorCode 406"), "{}", e.message);
        let PartResult::Done(Err(e)) = &r[2] else {
            panic!("{r:?}")
        };
        assert_eq!((e.class, e.http_status), (ErrorClass::Transient, Some(429)));
        // A message the answer left out may have been taken.
        let PartResult::Done(Err(e)) = &r[3] else {
            panic!("{r:?}")
        };
        assert_eq!(e.class, ErrorClass::Ambiguous);
    }

    #[test]
    fn a_refused_batch_is_each_messages_refusal_and_too_many_go_alone() {
        let e = SendError {
            class: ErrorClass::QuotaAuth,
            message: "postmark answered 401 ErrorCode 10: bad token".into(),
            http_status: Some(401),
            retry_after: None,
        };
        assert_eq!(
            batch_results(2, Err(e.clone())),
            vec![PartResult::Done(Err(e)); 2]
        );
        let too_many = SendError {
            class: ErrorClass::Permanent,
            message: "postmark answered 422 ErrorCode 410: too many".into(),
            http_status: Some(422),
            retry_after: None,
        };
        assert_eq!(
            batch_results(3, Err(too_many)),
            vec![PartResult::Resend { alone: true }; 3]
        );
    }

    #[test]
    fn classifies_the_documented_error_codes() {
        assert_eq!(classify(401, Some(10)), ErrorClass::QuotaAuth);
        assert_eq!(classify(422, Some(405)), ErrorClass::QuotaAuth);
        assert_eq!(classify(422, Some(412)), ErrorClass::QuotaAuth);
        assert_eq!(classify(422, Some(300)), ErrorClass::Permanent);
        assert_eq!(classify(422, Some(406)), ErrorClass::Permanent);
        assert_eq!(classify(422, None), ErrorClass::Permanent);
        assert_eq!(classify(429, None), ErrorClass::Transient);
        assert_eq!(classify(500, None), ErrorClass::Ambiguous);
        assert_eq!(classify(504, None), ErrorClass::Ambiguous);
        assert_eq!(classify(503, None), ErrorClass::Transient);
        // The vendor's error code decides, whatever the status says.
        assert_eq!(classify(500, Some(406)), ErrorClass::Permanent);
        assert_eq!(classify(503, Some(10)), ErrorClass::QuotaAuth);
    }
}
