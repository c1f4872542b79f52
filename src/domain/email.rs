//! The email payload (wire format v1's `payload` field) and its validated form.

use super::{AddressError, Mailbox, has_header_breaking_char};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Recipients across to/cc/bcc.
pub const MAX_RECIPIENTS: usize = 50;
pub const MAX_SUBJECT_LEN: usize = 998;
pub const MAX_HEADERS: usize = 50;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 128;

/// Headers a job may not set: the provider or mailfleet owns them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "sender",
    "date",
    "message-id",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "return-path",
];

/// Header names a job may not set because a provider reads them as instructions (SendGrid's
/// `X-SMTPAPI`, Mailgun's `X-Mailgun-*`, SES's `X-SES-*`, Postmark's `X-PM-*`) or because they
/// carry mailfleet's own metadata that webhooks use to find jobs (`X-Mailfleet-*`). Matched
/// case-insensitively, as a name or a prefix.
const VENDOR_HEADERS: &[&str] = &["x-smtpapi"];
const VENDOR_HEADER_PREFIXES: &[&str] = &["x-mailgun-", "x-ses-", "x-pm-", "x-mailfleet-"];

/// Most field errors one email reports; the rest are counted in one more entry.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// The JSON payload exactly as producers write it. Unknown fields are an error: a typo such as
/// `subjet` must not silently send an email without a subject.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
}

// Payloads hold addresses and bodies: Debug shows only their shape.
impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("to", &self.to.len())
            .field("template", &self.template)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// One problem with one field, addressed by a JSON-pointer-like path (`to[2]`, `headers.X-Foo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in a payload, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("invalid email: {}", summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// The first few errors, so a batch of a thousand bad lines does not make a megabyte message.
fn summary(errs: &[FieldError]) -> String {
    const SHOWN: usize = 5;
    let mut s = errs
        .iter()
        .take(SHOWN)
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    if errs.len() > SHOWN {
        s.push_str(&format!("; and {} more", errs.len() - SHOWN));
    }
    s
}

impl ValidationErrors {
    /// At most `max` errors: the first `max - 1` and one that counts the rest, so an error
    /// answer stays small whatever the request held.
    pub fn capped(mut self, max: usize) -> Self {
        let max = max.max(1);
        if self.0.len() > max {
            let more = self.0.len() - (max - 1);
            self.0.truncate(max - 1);
            self.0.push(FieldError {
                field: String::new(),
                message: format!("and {more} more errors"),
            });
        }
        self
    }
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationErrors(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
    /// The same errors with every field path put under `prefix` (for batch items).
    pub fn prefixed(self, prefix: &str) -> Self {
        ValidationErrors(
            self.0
                .into_iter()
                .map(|e| FieldError {
                    field: format!("{prefix}{}", e.field),
                    message: e.message,
                })
                .collect(),
        )
    }
}

/// A header name: an RFC 5322 field name, not one mailfleet or the provider owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    /// Set `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// (RFC 8058), replacing any the job carried. Refuses (false) a URL that could break the
    /// header.
    pub fn set_one_click_unsubscribe(&mut self, url: &str) -> bool {
        if has_header_breaking_char(url) || url.contains(['<', '>']) || !url.starts_with("http") {
            return false;
        }
        self.headers.retain(|(n, _)| {
            !n.0.eq_ignore_ascii_case("list-unsubscribe")
                && !n.0.eq_ignore_ascii_case("list-unsubscribe-post")
        });
        self.headers
            .push((HeaderName("List-Unsubscribe".into()), format!("<{url}>")));
        self.headers.push((
            HeaderName("List-Unsubscribe-Post".into()),
            "List-Unsubscribe=One-Click".into(),
        ));
        true
    }
}

/// What the email says: either a named template from Postgres with variables, or inline bodies.
#[derive(Clone, PartialEq)]
pub enum Content {
    Template {
        name: String,
        vars: serde_json::Map<String, serde_json::Value>,
    },
    Inline {
        html: Option<String>,
        text: Option<String>,
        /// Present when the bodies and subject are templates to render with these vars.
        vars: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// A validated email job: every address parsed, every header safe.
#[derive(Clone)]
pub struct Email {
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    /// Required for inline content; for templates it overrides the template's subject.
    pub subject: Option<String>,
    pub content: Content,
    pub headers: Vec<(HeaderName, String)>,
    pub tags: Vec<String>,
    pub tenant: Option<String>,
    pub provider: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field(
                "recipients",
                &(self.to.len() + self.cc.len() + self.bcc.len()),
            )
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Email {
    /// Refuse a bulk email with more than one recipient. Bulk email carries a one-click
    /// unsubscribe link (RFC 8058) that names its recipient, and one message carries one
    /// link: sent to several, every recipient's click would suppress the first. So bulk email
    /// goes to exactly one address (`to`, no `cc` or `bcc`); send one job per recipient.
    /// Transactional email, which carries no link, may have up to [`MAX_RECIPIENTS`].
    pub fn check_lane(&self, lane: super::Lane) -> Result<(), ValidationErrors> {
        let n = self.to.len() + self.cc.len() + self.bcc.len();
        if lane == super::Lane::Bulk && n != 1 {
            return Err(ValidationErrors::single(
                "to",
                format!(
                    "{n} recipients; bulk email goes to one recipient, so that its unsubscribe \
                     link is that recipient's own (send one job per recipient)"
                ),
            ));
        }
        Ok(())
    }

    /// The first recipient's domain: what we record and log instead of an address.
    pub fn recipient_domain(&self) -> &str {
        self.to.first().map(|m| m.address.domain()).unwrap_or("")
    }
    pub fn template_name(&self) -> Option<&str> {
        match &self.content {
            Content::Template { name, .. } => Some(name),
            Content::Inline { .. } => None,
        }
    }
}

struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, field: impl Into<String>, message: impl fmt::Display) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.to_string(),
        });
    }
    fn mailboxes(&mut self, field: &str, list: &[String]) -> Vec<Mailbox> {
        let mut out = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match Mailbox::parse(raw) {
                Ok(a) => out.push(a),
                Err(e) => self.push(format!("{field}[{i}]"), e),
            }
        }
        out
    }
    fn mailbox(&mut self, field: &str, raw: &str) -> Option<Mailbox> {
        Mailbox::parse(raw)
            .map_err(|e: AddressError| self.push(field, e))
            .ok()
    }
    fn safe_text(&mut self, field: &str, s: &str, max: usize) {
        if has_header_breaking_char(s) {
            self.push(field, "contains CR, LF or NUL");
        } else if s.len() > max {
            self.push(field, format!("is longer than {max} bytes"));
        }
    }
}

impl TryFrom<Payload> for Email {
    type Error = ValidationErrors;

    fn try_from(p: Payload) -> Result<Self, Self::Error> {
        let mut c = Collector(Vec::new());
        if p.to.is_empty() {
            c.push("to", "must list at least one recipient");
        }
        // Counted before any is parsed: a list of a million bad entries is one error, not a
        // million.
        let n = p.to.len() + p.cc.len() + p.bcc.len();
        let (to, cc, bcc) = if n > MAX_RECIPIENTS {
            c.push(
                "to",
                format!("{n} recipients; at most {MAX_RECIPIENTS} per email"),
            );
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            (
                c.mailboxes("to", &p.to),
                c.mailboxes("cc", &p.cc),
                c.mailboxes("bcc", &p.bcc),
            )
        };
        let from = c.mailbox("from", &p.from);
        let reply_to = p.reply_to.as_deref().and_then(|r| c.mailbox("reply_to", r));
        if let Some(s) = &p.subject {
            c.safe_text("subject", s, MAX_SUBJECT_LEN);
        }
        let content = match (p.template, p.html, p.text) {
            (Some(name), None, None) => {
                if name.is_empty() || name.len() > MAX_NAME_LEN || has_header_breaking_char(&name) {
                    c.push("template", "must be a non-empty name of at most 128 bytes");
                }
                Some(Content::Template {
                    name,
                    vars: p.vars.unwrap_or_default(),
                })
            }
            (Some(_), _, _) => {
                c.push("template", "use either template or html/text, not both");
                None
            }
            (None, None, None) => {
                c.push("html", "one of template, html or text is required");
                None
            }
            (None, html, text) => {
                if p.subject.is_none() {
                    c.push("subject", "is required unless a template provides it");
                }
                Some(Content::Inline {
                    html,
                    text,
                    vars: p.vars,
                })
            }
        };
        let mut headers = Vec::with_capacity(p.headers.len().min(MAX_HEADERS));
        let too_many_headers = p.headers.len() > MAX_HEADERS;
        if too_many_headers {
            c.push("headers", format!("at most {MAX_HEADERS} headers"));
        }
        for (name, value) in p.headers.into_iter().filter(|_| !too_many_headers) {
            let field = format!("headers.{}", name.escape_debug());
            let valid_name = !name.is_empty()
                && name.len() <= 76
                && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !valid_name {
                c.push(field, "is not a valid header name");
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                c.push(field, "is set by mailfleet and may not be overridden");
            } else if is_vendor_header(&name) {
                c.push(
                    field,
                    "is a provider's control header or mailfleet's own and may not be set",
                );
            } else if has_header_breaking_char(&value) {
                c.push(field, "contains CR, LF or NUL");
            } else if value.len() > MAX_SUBJECT_LEN {
                c.push(field, format!("is longer than {MAX_SUBJECT_LEN} bytes"));
            } else {
                headers.push((HeaderName(name), value));
            }
        }
        if p.tags.len() > MAX_TAGS {
            c.push("tags", format!("at most {MAX_TAGS} tags"));
        } else {
            for (i, t) in p.tags.iter().enumerate() {
                c.safe_text(&format!("tags[{i}]"), t, MAX_TAG_LEN);
            }
        }
        if let Some(t) = &p.tenant
            && let Err(e) = super::check_tenant(t)
        {
            c.push("tenant", e);
        }
        if let Some(pr) = &p.provider {
            c.safe_text("provider", pr, MAX_NAME_LEN);
        }
        match (c.0.is_empty(), from, content) {
            (true, Some(from), Some(content)) => Ok(Email {
                to,
                cc,
                bcc,
                from,
                reply_to,
                subject: p.subject,
                content,
                headers,
                tags: p.tags,
                tenant: p.tenant,
                provider: p.provider,
                send_at: p.send_at,
            }),
            _ => Err(ValidationErrors(c.0).capped(MAX_REPORTED_ERRORS)),
        }
    }
}

fn is_vendor_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    VENDOR_HEADERS.contains(&lower.as_str())
        || VENDOR_HEADER_PREFIXES.iter().any(|p| lower.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Payload {
        Payload {
            to: vec!["ada@example.com".into()],
            from: "Shop <shop@example.com>".into(),
            subject: Some("Your order".into()),
            text: Some("Thanks".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_payload_is_valid() {
        let e = Email::try_from(base()).unwrap();
        assert_eq!(e.recipient_domain(), "example.com");
    }

    #[test]
    fn reports_every_bad_field_at_once() {
        let mut p = base();
        p.to = vec!["ok@example.com".into(), "bad".into()];
        p.subject = Some("Hi\r\nBcc: x@evil.com".into());
        p.headers.insert("X-Tag".into(), "a\nb".into());
        p.headers.insert("Bcc".into(), "x@evil.com".into());
        let errs = Email::try_from(p).unwrap_err().0;
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["to[1]", "subject", "headers.Bcc", "headers.X-Tag"]);
    }

    #[test]
    fn a_long_recipient_list_is_one_error_and_every_list_of_errors_is_capped() {
        let mut p = base();
        p.to = vec!["not an address".into(); 100_000];
        let errs = Email::try_from(p).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("100000 recipients"));
        let mut p = base();
        p.to = vec!["bad".into(); 50];
        let errs = Email::try_from(p).unwrap_err().0;
        assert_eq!(errs.len(), MAX_REPORTED_ERRORS);
        assert_eq!(errs.last().unwrap().message, "and 31 more errors");
    }

    #[test]
    fn bulk_email_has_exactly_one_recipient() {
        use crate::domain::Lane;
        let e = Email::try_from(base()).unwrap();
        assert!(e.check_lane(Lane::Bulk).is_ok());
        let mut p = base();
        p.bcc = vec!["other@example.com".into()];
        let e = Email::try_from(p).unwrap();
        assert!(e.check_lane(Lane::Tx).is_ok());
        let err = e.check_lane(Lane::Bulk).unwrap_err();
        assert!(err.0[0].message.contains("one recipient"), "{err}");
    }

    #[test]
    fn provider_control_headers_and_mailfleets_own_are_refused() {
        for name in [
            "X-SMTPAPI",
            "x-smtpapi",
            "X-Mailgun-Variables",
            "X-SES-CONFIGURATION-SET",
            "X-PM-Message-Stream",
            "X-Mailfleet-Job",
        ] {
            let mut p = base();
            p.headers.insert(name.into(), "{}".into());
            let errs = Email::try_from(p).unwrap_err().0;
            assert!(errs[0].message.contains("control header"), "{name}");
        }
        let mut p = base();
        p.headers.insert("X-Campaign".into(), "spring".into());
        assert!(Email::try_from(p).is_ok());
    }

    #[test]
    fn a_tenant_outside_the_safe_set_is_refused() {
        let mut p = base();
        p.tenant = Some("acme|zz".into());
        let errs = Email::try_from(p).unwrap_err().0;
        assert_eq!(errs[0].field, "tenant");
        let mut p = base();
        p.tenant = Some("acme-eu.1".into());
        assert!(Email::try_from(p).is_ok());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Payload>(
            r#"{"to":["a@example.com"],"from":"b@example.com","subjet":"x","text":"y"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("subjet"));
    }

    #[test]
    fn template_and_inline_are_exclusive() {
        let mut p = base();
        p.template = Some("welcome".into());
        assert!(Email::try_from(p).is_err());
        let mut p = base();
        p.text = None;
        p.template = Some("welcome".into());
        p.subject = None;
        assert!(Email::try_from(p).is_ok());
    }
}
