//! Mailgun `POST /v3/<domain>/messages`: HTTP basic auth (`api` and the API key), form
//! fields, on the US (`api.mailgun.net`) or EU (`api.eu.mailgun.net`) base URL. A 200 answer
//! is `{"id": "<...>", "message": "Queued. Thank you."}`. The job id travels as the user
//! variable `v:mailfleet_id`, which Mailgun attaches to every event of the message.

use super::{Accepted, ErrorClass, Message, MessageIdFrom, Provider, SendError, exchange};
use crate::config::{ProviderConfig, Secret};
use futures::future::BoxFuture;
use std::time::Duration;

pub struct Mailgun {
    name: String,
    url: String,
    user: String,
    api_key: Secret,
    timeout: Duration,
    client: reqwest::Client,
}

impl Mailgun {
    pub fn new(c: &ProviderConfig, client: reqwest::Client) -> Self {
        Mailgun {
            name: c.name.clone(),
            url: format!(
                "{}/v3/{}/messages",
                c.base_url.trim_end_matches('/'),
                c.domain.as_deref().unwrap_or_default()
            ),
            user: c.key_id.clone().unwrap_or_else(|| "api".into()),
            api_key: c.api_key.clone(),
            timeout: Duration::from_millis(c.timeout_ms),
            client,
        }
    }
}

/// The form fields, in Mailgun's documented names.
pub(crate) fn form(m: &Message<'_>) -> Vec<(String, String)> {
    let e = m.email;
    let mut f: Vec<(String, String)> = Vec::with_capacity(8 + e.headers.len());
    f.push(("from".into(), e.from.to_header()));
    for (field, list) in [("to", &e.to), ("cc", &e.cc), ("bcc", &e.bcc)] {
        for b in list {
            f.push((field.into(), b.to_header()));
        }
    }
    f.push(("subject".into(), m.rendered.subject.clone()));
    if let Some(t) = &m.rendered.text {
        f.push(("text".into(), t.clone()));
    }
    if let Some(h) = &m.rendered.html {
        f.push(("html".into(), h.clone()));
    }
    if let Some(r) = &e.reply_to {
        f.push(("h:Reply-To".into(), r.to_header()));
    }
    for (k, v) in &e.headers {
        f.push((format!("h:{}", k.as_str()), v.clone()));
    }
    // Mailgun keeps at most 3 tags per message.
    for t in e.tags.iter().take(3) {
        f.push(("o:tag".into(), t.clone()));
    }
    f.push(("v:mailfleet_id".into(), m.job_id.to_string()));
    f
}

/// Mailgun's documented statuses: 400 bad request, 401 unauthorized, 402 request failed
/// (account), 403 forbidden, 404 not found (the domain), 413 too large, 429 too many
/// requests, 5xx server errors (of which only 503 proves the message was not taken).
pub fn classify(status: u16) -> ErrorClass {
    match status {
        401..=404 => ErrorClass::QuotaAuth,
        s => super::classify_status(s),
    }
}

impl Provider for Mailgun {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let req = self
                .client
                .post(&self.url)
                .basic_auth(&self.user, Some(self.api_key.expose()))
                .timeout(self.timeout)
                .form(&form(&msg));
            exchange(req, "mailgun", MessageIdFrom::Json("id"), |status, _, _| {
                (classify(status), None)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_documented_statuses() {
        assert_eq!(classify(400), ErrorClass::Permanent);
        assert_eq!(classify(413), ErrorClass::Permanent);
        for s in [401, 402, 403, 404] {
            assert_eq!(classify(s), ErrorClass::QuotaAuth, "{s}");
        }
        for s in [408, 429, 503] {
            assert_eq!(classify(s), ErrorClass::Transient, "{s}");
        }
        for s in [500, 502, 504] {
            assert_eq!(classify(s), ErrorClass::Ambiguous, "{s}");
        }
    }
}
