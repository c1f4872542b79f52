//! Amazon SES v2 `SendEmail`: `POST /v2/email/outbound-emails`, JSON body, signed with
//! AWS Signature Version 4 (service `ses`, the configured region) by aws-sigv4. A 200 answer
//! carries `MessageId`. The job id travels as the email tag `mailfleet_id`, which SES passes
//! to event destinations (bounces, complaints, deliveries).
//!
//! Errors are restJson1: the type is in the `x-amzn-ErrorType` header (or the body's
//! `__type`/`code`), the text in `message`.

use super::{
    Accepted, ErrorClass, Message, MessageIdFrom, NameValue, Provider, SendError, exchange,
};
use crate::config::{ProviderConfig, Secret};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use futures::future::BoxFuture;
use serde::Serialize;
use std::time::{Duration, SystemTime};

pub struct Ses {
    name: String,
    url: String,
    region: String,
    key_id: String,
    secret: Secret,
    session_token: Option<Secret>,
    configuration_set: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
}

impl Ses {
    pub fn new(c: &ProviderConfig, client: reqwest::Client) -> Self {
        Ses {
            name: c.name.clone(),
            url: format!(
                "{}/v2/email/outbound-emails",
                c.base_url.trim_end_matches('/')
            ),
            region: c.region.clone().unwrap_or_else(|| "us-east-1".into()),
            key_id: c.key_id.clone().unwrap_or_default(),
            secret: c.api_key.clone(),
            session_token: c.session_token.clone(),
            configuration_set: c.configuration_set.clone(),
            timeout: Duration::from_millis(c.timeout_ms),
            client,
        }
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` with
    /// temporary credentials) for a POST of `body` with `content_type` to `self.url`.
    pub(crate) fn sign(
        &self,
        content_type: &str,
        body: &[u8],
        at: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let identity = Credentials::new(
            &self.key_id,
            self.secret.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "mailfleet",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ses")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let headers = [("content-type", content_type)];
        let request = SignableRequest::new(
            "POST",
            self.url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Text<'a> {
    data: &'a str,
    charset: &'static str,
}

fn text(data: &str) -> Text<'_> {
    Text {
        data,
        charset: "UTF-8",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<Text<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Simple<'a> {
    subject: Text<'a>,
    body: Body<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<NameValue<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Content<'a> {
    simple: Simple<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Destination {
    to_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cc_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bcc_addresses: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Request<'a> {
    from_email_address: String,
    destination: Destination,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reply_to_addresses: Vec<String>,
    content: Content<'a>,
    email_tags: Vec<Tag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    configuration_set_name: Option<&'a str>,
}

pub(crate) fn request<'a>(m: &Message<'a>, configuration_set: Option<&'a str>) -> Request<'a> {
    let e = m.email;
    let list = |v: &[crate::domain::Mailbox]| v.iter().map(|b| b.to_header()).collect();
    Request {
        from_email_address: e.from.to_header(),
        destination: Destination {
            to_addresses: list(&e.to),
            cc_addresses: list(&e.cc),
            bcc_addresses: list(&e.bcc),
        },
        reply_to_addresses: e.reply_to.iter().map(|b| b.to_header()).collect(),
        content: Content {
            simple: Simple {
                subject: text(&m.rendered.subject),
                body: Body {
                    text: m.rendered.text.as_deref().map(text),
                    html: m.rendered.html.as_deref().map(text),
                },
                headers: e
                    .headers
                    .iter()
                    .map(|(k, v)| NameValue {
                        name: k.as_str(),
                        value: v,
                    })
                    .collect(),
            },
        },
        email_tags: vec![Tag {
            name: "mailfleet_id",
            value: m.job_id.to_string(),
        }],
        configuration_set_name: configuration_set,
    }
}

/// SES's documented SendEmail errors, by type, falling back on the HTTP status.
pub fn classify(status: u16, error_type: &str) -> ErrorClass {
    match error_type {
        "AccountSuspendedException"
        | "SendingPausedException"
        | "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "ExpiredTokenException"
        | "NotFoundException" => ErrorClass::QuotaAuth,
        // Refused before anything was done: throttled, or the service is not available.
        "TooManyRequestsException"
        | "Throttling"
        | "ThrottlingException"
        | "ServiceUnavailable" => ErrorClass::Transient,
        // "The request processing has failed because of an unknown error": maybe sent.
        "InternalFailure" => ErrorClass::Ambiguous,
        "MessageRejected"
        | "MailFromDomainNotVerifiedException"
        | "BadRequestException"
        | "LimitExceededException" => ErrorClass::Permanent,
        _ => super::classify_status(status),
    }
}

/// The error type of a restJson1 answer: `x-amzn-ErrorType` (`Type:namespace` form) or the
/// body's `__type` / `code` (`namespace#Type` form).
pub fn error_type(headers: &reqwest::header::HeaderMap, body: &str) -> String {
    let raw = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            v.get("__type")
                .or_else(|| v.get("code"))
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let raw = raw.split(':').next().unwrap_or("");
    raw.rsplit('#').next().unwrap_or("").to_owned()
}

impl Provider for Ses {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&request(&msg, self.configuration_set.as_deref()))
                .map_err(|e| SendError::permanent(format!("encoding the request: {e}")))?;
            let signed = self
                .sign("application/json", &body, SystemTime::now())
                .map_err(SendError::permanent)?;
            let mut req = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .timeout(self.timeout);
            for (k, v) in signed {
                req = req.header(k, v);
            }
            exchange(
                req.body(body),
                "ses",
                MessageIdFrom::Json("MessageId"),
                |status, headers, body| {
                    let kind = error_type(headers, body);
                    (
                        classify(status, &kind),
                        Some(kind).filter(|k| !k.is_empty()),
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
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn classifies_the_documented_errors() {
        assert_eq!(classify(400, "MessageRejected"), ErrorClass::Permanent);
        assert_eq!(
            classify(400, "MailFromDomainNotVerifiedException"),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(400, "AccountSuspendedException"),
            ErrorClass::QuotaAuth
        );
        assert_eq!(
            classify(400, "SendingPausedException"),
            ErrorClass::QuotaAuth
        );
        assert_eq!(
            classify(403, "SignatureDoesNotMatch"),
            ErrorClass::QuotaAuth
        );
        assert_eq!(classify(403, ""), ErrorClass::QuotaAuth);
        assert_eq!(
            classify(429, "TooManyRequestsException"),
            ErrorClass::Transient
        );
        assert_eq!(classify(400, "Throttling"), ErrorClass::Transient);
        assert_eq!(classify(500, "InternalFailure"), ErrorClass::Ambiguous);
        assert_eq!(classify(500, ""), ErrorClass::Ambiguous);
        assert_eq!(classify(504, ""), ErrorClass::Ambiguous);
        assert_eq!(classify(503, ""), ErrorClass::Transient);
        assert_eq!(classify(503, "ServiceUnavailable"), ErrorClass::Transient);
        // The error type decides, whatever the status says.
        assert_eq!(classify(400, "InternalFailure"), ErrorClass::Ambiguous);
        assert_eq!(classify(500, "MessageRejected"), ErrorClass::Permanent);
        assert_eq!(classify(400, "BadRequestException"), ErrorClass::Permanent);
    }

    #[test]
    fn reads_the_error_type_from_the_header_or_the_body() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("MessageRejected:http://internal.amazon.com/coral/"),
        );
        assert_eq!(error_type(&h, ""), "MessageRejected");
        let body = r#"{"__type":"com.amazonaws.sesv2#SendingPausedException","message":"paused"}"#;
        assert_eq!(
            error_type(&HeaderMap::new(), body),
            "SendingPausedException"
        );
        assert_eq!(error_type(&HeaderMap::new(), "not json"), "");
    }
}
