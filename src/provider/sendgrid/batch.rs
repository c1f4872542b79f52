//! SendGrid's batch form of `mail/send` ([`crate::provider::batch`]): one personalization per
//! email, the shared fields once, content as substitution tags each personalization fills.

use super::{Content, Person, SendGrid};
use crate::provider::batch::{BatchDialect, Part, PartResult, key_of};
use crate::provider::{Accepted, Message, SendError};
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;

/// Most personalizations SendGrid takes in one request.
pub const MAX_BATCH: usize = 1000;
/// Most bytes of personalizations in one batch request: SendGrid takes 30 MB per request;
/// a batch stops well short of it.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most bytes of substitutions SendGrid takes per personalization.
pub const MAX_SUBSTITUTION_BYTES: usize = 10_000;
/// The tags a batch's content carries in place of each email's own text and HTML.
const TEXT_TAG: &str = "-mailfleet-text-body-";
const HTML_TAG: &str = "-mailfleet-html-body-";

/// The fields every personalization of a batch request shares.
#[derive(Serialize)]
struct Shared<'a> {
    from: Person<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<Person<'a>>,
    content: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    categories: &'a [String],
}

/// One email's personalization in a batch request.
#[derive(Serialize)]
struct BatchPersonalization<'a> {
    to: Vec<Person<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cc: Vec<Person<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bcc: Vec<Person<'a>>,
    subject: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, &'a str>,
    custom_args: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    substitutions: BTreeMap<&'static str, &'a str>,
}

/// The message's personalization and shared fields for a batch request (SendGrid allows
/// neither per-personalization content nor more than [`MAX_SUBSTITUTION_BYTES`] of
/// substitutions, so a long email's content is shared literally: it batches only with emails
/// of the same content).
pub(crate) fn part(m: &Message<'_>) -> Option<Part> {
    let e = m.email;
    let (text, html) = (m.rendered.text.as_deref(), m.rendered.html.as_deref());
    let tagged = text.map_or(0, |t| t.len() + TEXT_TAG.len())
        + html.map_or(0, |h| h.len() + HTML_TAG.len())
        <= MAX_SUBSTITUTION_BYTES;
    let mut content = Vec::with_capacity(2);
    let mut substitutions = BTreeMap::new();
    for (kind, tag, value) in [
        ("text/plain", TEXT_TAG, text),
        ("text/html", HTML_TAG, html),
    ] {
        let Some(value) = value else { continue };
        if tagged {
            content.push(Content { kind, value: tag });
            substitutions.insert(tag, value);
        } else {
            content.push(Content { kind, value });
        }
    }
    let shared = serde_json::to_string(&Shared {
        from: Person::from(&e.from),
        reply_to: e.reply_to.as_ref().map(Person::from),
        content,
        categories: &e.tags[..e.tags.len().min(10)],
    })
    .ok()?;
    let body = serde_json::to_string(&BatchPersonalization {
        to: e.to.iter().map(Person::from).collect(),
        cc: e.cc.iter().map(Person::from).collect(),
        bcc: e.bcc.iter().map(Person::from).collect(),
        subject: &m.rendered.subject,
        headers: e
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        custom_args: BTreeMap::from([("mailfleet_id", m.job_id.to_string())]),
        substitutions,
    })
    .ok()?;
    Some(Part {
        key: key_of(&shared),
        shared: shared.into(),
        body,
    })
}

/// The request body of a batch: the personalizations, then the shared fields.
pub(crate) fn batch_body(shared: &str, parts: &[String]) -> String {
    // `shared` is a JSON object: its fields follow the personalizations.
    let fields = shared.strip_prefix('{').unwrap_or(shared);
    crate::provider::batch::join_parts("{\"personalizations\":[", parts, &format!("],{fields}"))
}

/// The personalizations a 400's errors name (`personalizations.3.to.0.email` names 3).
fn named_personalizations(body: &str) -> Vec<usize> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut named: Vec<usize> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let field = e["field"].as_str()?;
            field
                .strip_prefix("personalizations.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    named
}

/// Each part's fate from a batch request's answer: `status` and `body` of a refusal, or the
/// accepted request's message id (each email gets it with its position, `<id>.<n>`).
pub(crate) fn batch_results(
    n: usize,
    answer: Result<Option<String>, SendError>,
    refusal_body: &str,
) -> Vec<PartResult> {
    match answer {
        Ok(id) => (0..n)
            .map(|i| {
                PartResult::Done(Ok(Accepted {
                    message_id: id.as_ref().map(|id| {
                        if n == 1 {
                            id.clone()
                        } else {
                            format!("{id}.{i}")
                        }
                    }),
                    http_status: 202,
                }))
            })
            .collect(),
        Err(e) if n > 1 && e.http_status == Some(400) => {
            // All-or-nothing validation: the messages it names fail, the rest go again; when
            // it names none, every message goes again alone, so the bad one finds itself.
            // Only indices of this batch count: an answer naming others names none of ours
            // (and resending the same batch would meet the same answer).
            let mut named = named_personalizations(refusal_body);
            named.retain(|&i| i < n);
            (0..n)
                .map(|i| {
                    if named.is_empty() {
                        PartResult::Resend { alone: true }
                    } else if named.binary_search(&i).is_ok() {
                        PartResult::Done(Err(e.clone()))
                    } else {
                        PartResult::Resend { alone: false }
                    }
                })
                .collect()
        }
        // Too big together: each goes alone.
        Err(e) if n > 1 && e.http_status == Some(413) => {
            vec![PartResult::Resend { alone: true }; n]
        }
        Err(e) => vec![PartResult::Done(Err(e)); n],
    }
}

impl BatchDialect for SendGrid {
    fn part(&self, msg: &Message<'_>) -> Option<Part> {
        part(msg)
    }

    fn send_parts<'a>(
        &'a self,
        shared: &'a str,
        parts: &'a [String],
    ) -> BoxFuture<'a, Vec<PartResult>> {
        Box::pin(async move {
            let body = batch_body(shared, parts);
            let resp = self
                .client
                .post(&self.url)
                .bearer_auth(self.api_key.expose())
                .timeout(self.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    return batch_results(
                        parts.len(),
                        Err(crate::provider::classify_transport(&e)),
                        "",
                    );
                }
            };
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                let id = resp
                    .headers()
                    .get("x-message-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return batch_results(parts.len(), Ok(id), "");
            }
            let retry = crate::provider::retry_after(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            let e = SendError {
                class: crate::provider::classify_status(status),
                message: format!(
                    "sendgrid answered {status}: {}",
                    crate::provider::scrub(&text)
                ),
                http_status: Some(status),
                retry_after: retry,
            };
            batch_results(parts.len(), Err(e), &text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ErrorClass;

    #[test]
    fn a_400_naming_personalizations_fails_those_and_resends_the_rest() {
        let e = SendError {
            class: ErrorClass::Permanent,
            message: "sendgrid answered 400".into(),
            http_status: Some(400),
            retry_after: None,
        };
        let body = r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.2.to.0.email"},{"message":"x","field":"personalizations.0.to.0.email"}]}"#;
        let r = batch_results(4, Err(e.clone()), body);
        assert_eq!(r[0], PartResult::Done(Err(e.clone())));
        assert_eq!(r[1], PartResult::Resend { alone: false });
        assert_eq!(r[2], PartResult::Done(Err(e.clone())));
        assert_eq!(r[3], PartResult::Resend { alone: false });
        // Naming none: every message goes again alone; a batch of one is just failed.
        let r = batch_results(
            3,
            Err(e.clone()),
            r#"{"errors":[{"message":"m","field":"from"}]}"#,
        );
        assert_eq!(r, vec![PartResult::Resend { alone: true }; 3]);
        // Naming only personalizations the batch does not have is naming none.
        let r = batch_results(
            2,
            Err(e.clone()),
            r#"{"errors":[{"message":"m","field":"personalizations.7.to"}]}"#,
        );
        assert_eq!(r, vec![PartResult::Resend { alone: true }; 2]);
        assert_eq!(
            batch_results(1, Err(e.clone()), body),
            vec![PartResult::Done(Err(e))]
        );
    }

    #[test]
    fn other_refusals_are_each_messages_own_and_accepted_ones_get_their_position() {
        let e = SendError {
            class: ErrorClass::Transient,
            message: "sendgrid answered 429".into(),
            http_status: Some(429),
            retry_after: None,
        };
        assert_eq!(
            batch_results(2, Err(e.clone()), ""),
            vec![PartResult::Done(Err(e)); 2]
        );
        let r = batch_results(2, Ok(Some("abc".into())), "");
        let PartResult::Done(Ok(a)) = &r[1] else {
            panic!("{r:?}")
        };
        assert_eq!(a.message_id.as_deref(), Some("abc.1"));
    }

    fn email() -> crate::domain::Email {
        let p: crate::domain::Payload = serde_json::from_value(serde_json::json!({
            "to": ["ada@example.com"], "from": "shop@example.com", "subject": "s", "text": "t"
        }))
        .unwrap();
        crate::domain::Email::try_from(p).unwrap()
    }

    fn part_of(text: &str) -> Part {
        let e = email();
        let r = crate::render::Rendered {
            subject: "s".into(),
            html: None,
            text: Some(text.into()),
        };
        part(&Message {
            job_id: crate::domain::JobId::new(),
            email: &e,
            rendered: &r,
        })
        .unwrap()
    }

    #[test]
    fn short_content_is_each_personalizations_own_and_long_content_is_shared_literally() {
        // Short: the content is a tag; each email's text is its substitution, so emails of
        // different content share a key (and a request).
        let (a, b) = (part_of("one"), part_of("two"));
        assert_eq!(a.key, b.key);
        assert!(a.shared.contains(TEXT_TAG) && !a.shared.contains("one"));
        assert!(a.body.contains("\"substitutions\"") && a.body.contains("one"));
        // Past SendGrid's 10,000 bytes of substitutions: the content itself is shared, so only
        // emails of the very same content share a request.
        let long = "x".repeat(MAX_SUBSTITUTION_BYTES);
        let (c, d, e) = (part_of(&long), part_of(&long), part_of(&format!("{long}y")));
        assert_eq!(c.key, d.key);
        assert_ne!(c.key, e.key);
        assert_ne!(c.key, a.key);
        assert!(c.shared.contains(&long) && !c.body.contains("substitutions"));
        let body: serde_json::Value =
            serde_json::from_str(&batch_body(&a.shared, &[a.body.clone(), b.body.clone()]))
                .unwrap();
        assert_eq!(body["personalizations"].as_array().unwrap().len(), 2);
        assert_eq!(body["from"]["email"], "shop@example.com");
        assert_eq!(
            body["personalizations"][1]["substitutions"][TEXT_TAG],
            "two"
        );
    }

    #[test]
    fn named_personalizations_reads_the_index_only() {
        assert_eq!(named_personalizations("not json"), Vec::<usize>::new());
        assert_eq!(
            named_personalizations(
                r#"{"errors":[{"field":"personalizations.17.subject"},{"field":"personalizations.17.to"}]}"#
            ),
            vec![17]
        );
    }
}
