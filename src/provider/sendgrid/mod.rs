//! SendGrid v3 `POST /v3/mail/send`: bearer key, JSON body, 202 with `X-Message-Id`.
//! The job id travels in `custom_args.mailfleet_id`, so events and the mock can name the job.
//!
//! Bulk sends may share one request ([`super::batch`]): one personalization per email, each
//! with its own recipients, subject, headers and `custom_args`; the shared fields (from,
//! reply-to, categories, content) once. Content differs per email, so a batch carries it as
//! substitution tags that each personalization fills with its own rendered text and HTML,
//! within SendGrid's 10,000 bytes of substitutions per personalization; a bigger email
//! shares a request only with emails of the very same content (a newsletter), which then goes
//! once, literally.

mod batch;

pub use batch::{MAX_BATCH, MAX_BATCH_BYTES, MAX_SUBSTITUTION_BYTES};

use super::{Accepted, Message, MessageIdFrom, Provider, SendError, exchange};
use crate::config::{ProviderConfig, Secret};
use crate::domain::Mailbox;
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct SendGrid {
    name: String,
    pub(super) url: String,
    pub(super) api_key: Secret,
    pub(super) timeout: Duration,
    pub(super) client: reqwest::Client,
}

impl SendGrid {
    pub fn new(c: &ProviderConfig, client: reqwest::Client) -> Self {
        SendGrid {
            name: c.name.clone(),
            url: format!("{}/v3/mail/send", c.base_url.trim_end_matches('/')),
            api_key: c.api_key.clone(),
            timeout: Duration::from_millis(c.timeout_ms),
            client,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Person<'a> {
    pub(super) email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> From<&'a Mailbox> for Person<'a> {
    fn from(m: &'a Mailbox) -> Self {
        Person {
            email: m.address.as_str(),
            name: m.name.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct Personalization<'a> {
    to: Vec<Person<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cc: Vec<Person<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bcc: Vec<Person<'a>>,
}

#[derive(Serialize)]
pub(super) struct Content<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) value: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Body<'a> {
    personalizations: [Personalization<'a>; 1],
    from: Person<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<Person<'a>>,
    subject: &'a str,
    content: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    categories: &'a [String],
    custom_args: BTreeMap<&'static str, String>,
}

pub(crate) fn body<'a>(m: &Message<'a>) -> Body<'a> {
    let e = m.email;
    let mut content = Vec::with_capacity(2);
    // SendGrid requires text/plain before text/html.
    if let Some(t) = &m.rendered.text {
        content.push(Content {
            kind: "text/plain",
            value: t,
        });
    }
    if let Some(h) = &m.rendered.html {
        content.push(Content {
            kind: "text/html",
            value: h,
        });
    }
    Body {
        personalizations: [Personalization {
            to: e.to.iter().map(Person::from).collect(),
            cc: e.cc.iter().map(Person::from).collect(),
            bcc: e.bcc.iter().map(Person::from).collect(),
        }],
        from: Person::from(&e.from),
        reply_to: e.reply_to.as_ref().map(Person::from),
        subject: &m.rendered.subject,
        content,
        headers: e
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        // SendGrid allows at most 10 categories.
        categories: &e.tags[..e.tags.len().min(10)],
        custom_args: BTreeMap::from([("mailfleet_id", m.job_id.to_string())]),
    }
}

impl Provider for SendGrid {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let req = self
                .client
                .post(&self.url)
                .bearer_auth(self.api_key.expose())
                .timeout(self.timeout)
                .json(&body(&msg));
            // Error bodies are {"errors":[{"message":..,"field":..}]}; the status decides.
            exchange(
                req,
                "sendgrid",
                MessageIdFrom::Header("x-message-id"),
                |status, _, _| (super::classify_status(status), None),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn classifies_sendgrid_statuses() {
        use crate::provider::{ErrorClass, classify_status};
        assert_eq!(classify_status(400), ErrorClass::Permanent);
        assert_eq!(classify_status(413), ErrorClass::Permanent);
        assert_eq!(classify_status(401), ErrorClass::QuotaAuth);
        assert_eq!(classify_status(403), ErrorClass::QuotaAuth);
        // Proven not taken: retried, and failed over.
        for s in [408, 429, 503] {
            assert_eq!(classify_status(s), ErrorClass::Transient, "{s}");
        }
        // A gateway may answer these after SendGrid queued the email.
        for s in [500, 502, 504, 520, 599] {
            assert_eq!(classify_status(s), ErrorClass::Ambiguous, "{s}");
        }
        assert_eq!(classify_status(600), ErrorClass::Permanent);
        assert_eq!(classify_status(499), ErrorClass::Permanent);
    }
}
