//! Postmark `POST /email`: the server token in `X-Postmark-Server-Token`, JSON body, on a
//! message stream (`outbound` unless configured). A 200 answer carries `MessageID` and
//! `ErrorCode: 0`; errors come as 422 (or 401) with a numeric `ErrorCode`, which decides the
//! class. The job id travels in `Metadata.mailfleet_id`, returned with every webhook.

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

#[cfg(test)]
mod tests {
    use super::*;

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
