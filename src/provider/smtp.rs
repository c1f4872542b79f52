//! SMTP through lettre: a pooled async transport per provider, STARTTLS (required), implicit
//! TLS, or plain (a local relay or test server only), with optional AUTH. The job id travels
//! in the `X-Mailfleet-Id` header and in the `Message-ID` (`<job id@sender's domain>`, as
//! receivers expect of a message id); the message id recorded is the server's "queued as" id
//! when its 250 reply names one.
//!
//! Classes: a 5xx reply is permanent, except 530/534/535/538 (authentication), which are
//! quota/auth; a 4xx reply is transient; a failed connection is transient (nothing was sent);
//! a TLS failure is quota/auth (the configuration cannot work), and so is a client-side error
//! of the dialogue (credentials set for a server that offers no mechanism lettre can use: the
//! message was built already, so only the configuration can be at fault; the breaker opens and
//! jobs wait instead of failing); a network error or timeout later in the dialogue is
//! ambiguous, since the server may have accepted the DATA.

use super::{Accepted, ErrorClass, Message, Provider, SendError, scrub};
use crate::config::{ProviderConfig, SmtpTls};
use futures::future::BoxFuture;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox as LMailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::time::Duration;

pub struct Smtp {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    pub fn new(c: &ProviderConfig) -> Result<Self, String> {
        crate::install_crypto_provider();
        let host = c.host.as_deref().ok_or("host is required")?;
        let builder = match c.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host,
            )),
        }
        .map_err(|e| format!("SMTP TLS setup for {host}: {e}"))?;
        let mut builder = builder
            .timeout(Some(Duration::from_millis(c.timeout_ms)))
            .pool_config(PoolConfig::new().max_size(c.pool_size));
        if let Some(port) = c.port {
            builder = builder.port(port);
        }
        if let Some(user) = &c.key_id {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                c.api_key.expose().to_owned(),
            ));
        }
        Ok(Smtp {
            name: c.name.clone(),
            transport: builder.build(),
        })
    }
}

fn mailbox(b: &crate::domain::Mailbox) -> Result<LMailbox, SendError> {
    let address = b.address.as_str().parse().map_err(|e| {
        SendError::permanent(format!("address not accepted by the SMTP encoder: {e}"))
    })?;
    Ok(LMailbox::new(b.name.clone(), address))
}

/// The MIME message: text, html, or both as multipart/alternative.
pub(crate) fn build(m: &Message<'_>) -> Result<lettre::Message, SendError> {
    let e = m.email;
    let mut b = lettre::Message::builder()
        .from(mailbox(&e.from)?)
        .subject(m.rendered.subject.clone())
        .message_id(Some(format!("<{}@{}>", m.job_id, e.from.address.domain())));
    for t in &e.to {
        b = b.to(mailbox(t)?);
    }
    for t in &e.cc {
        b = b.cc(mailbox(t)?);
    }
    for t in &e.bcc {
        b = b.bcc(mailbox(t)?);
    }
    if let Some(r) = &e.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    let custom = std::iter::once(("X-Mailfleet-Id".to_owned(), m.job_id.to_string())).chain(
        e.headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone())),
    );
    for (k, v) in custom {
        let name = HeaderName::new_from_ascii(k)
            .map_err(|_| SendError::permanent("a header name is not ASCII"))?;
        b = b.raw_header(HeaderValue::new(name, v));
    }
    let built = match (&m.rendered.text, &m.rendered.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (Some(t), None) => b.singlepart(SinglePart::plain(t.clone())),
        (None, Some(h)) => b.singlepart(SinglePart::html(h.clone())),
        (None, None) => b.singlepart(SinglePart::plain(String::new())),
    };
    built.map_err(|e| SendError::permanent(format!("building the message: {e}")))
}

/// The class of an SMTP reply code.
pub fn classify_code(code: u16) -> ErrorClass {
    match code {
        530 | 534 | 535 | 538 => ErrorClass::QuotaAuth,
        500..=599 => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| {
        let s = c.to_string();
        s.parse::<u16>().unwrap_or(0)
    });
    let text = e.to_string();
    let class = if let Some(code) = code {
        classify_code(code)
    } else if e.is_tls() {
        ErrorClass::QuotaAuth
    } else if text.starts_with("Connection error") || e.is_transport_shutdown() {
        ErrorClass::Transient
    } else if e.is_client() {
        ErrorClass::QuotaAuth
    } else {
        ErrorClass::Ambiguous
    };
    SendError {
        class,
        message: format!("smtp: {}", scrub(&text)),
        http_status: None,
        retry_after: None,
    }
}

impl Provider for Smtp {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, msg: Message<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let message = build(&msg)?;
            let resp = self
                .transport
                .send(message)
                .await
                .map_err(|e| classify(&e))?;
            let line = resp.message().collect::<Vec<_>>().join(" ");
            let queued = line
                .split_once("queued as ")
                .map(|(_, id)| id.trim().to_owned())
                .filter(|id| !id.is_empty());
            Ok(Accepted {
                message_id: queued.or_else(|| Some(format!("{}@mailfleet", msg.job_id))),
                http_status: resp.code().to_string().parse().unwrap_or(250),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_reply_codes() {
        for c in [530, 534, 535, 538] {
            assert_eq!(classify_code(c), ErrorClass::QuotaAuth, "{c}");
        }
        for c in [550, 552, 553, 554] {
            assert_eq!(classify_code(c), ErrorClass::Permanent, "{c}");
        }
        for c in [421, 450, 451, 452, 454] {
            assert_eq!(classify_code(c), ErrorClass::Transient, "{c}");
        }
    }
}
