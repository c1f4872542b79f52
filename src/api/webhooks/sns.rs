//! Amazon SNS message verification, for SES events delivered through an SNS topic.
//!
//! SNS signs each message with RSA (PKCS#1 v1.5) over a canonical string of its fields; with
//! signature version 2 the digest is SHA-256. The signing certificate is fetched from the
//! message's `SigningCertURL`, which is believed only when it passes the allow-list: by default
//! `https://sns.<region>.amazonaws.com/...pem` (the TLS connection then vouches for the host);
//! a deployment may replace the rule with explicit URL prefixes. Certificates are cached per URL
//! until they expire, so a burst of events costs one fetch; a URL that failed (not found,
//! unreadable, not RSA) is refused for five minutes without a fetch; at most four fetches run
//! at once, and a post that would start a fifth gets 503. The webhook checks a message's topic
//! and timestamp before it asks for a certificate.
//!
//! Version 1 (SHA-1) messages are refused: a topic's `SignatureVersion` attribute should be set
//! to 2.

use super::Refused;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// Largest certificate document fetched.
const MAX_CERT_BYTES: usize = 16 * 1024;
/// Certificate URLs remembered (good keys and failures); past it the oldest entry goes.
const MAX_CACHED: usize = 64;
/// How long a URL whose certificate could not be had is refused without fetching it again.
const FAILURE_TTL_SECS: i64 = 300;
/// Certificate fetches in flight at once; a post that would start one more is refused with
/// 503 (SNS retries), so a flood of posts naming new URLs cannot queue fetches without bound.
const MAX_FETCHES: usize = 4;

/// What the cache knows about one certificate URL.
#[derive(Clone)]
enum Cached {
    /// Its key, until the certificate's notAfter (Unix seconds).
    Key(RsaPublicKey, i64),
    /// It failed (refused, unreadable, not found): refused again until then.
    Failed(Refused, i64),
}

/// An SNS HTTP(S) message as posted to the endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

impl SnsMessage {
    /// The canonical string SNS signs: `Name\nValue\n` for the fields of this message type,
    /// in byte order of the names, `Subject` only when present.
    pub fn string_to_sign(&self) -> Result<String, Refused> {
        let mut fields: Vec<(&str, &str)> = vec![("Message", &self.message)];
        fields.push(("MessageId", &self.message_id));
        match self.kind.as_str() {
            "Notification" => {
                if let Some(s) = &self.subject {
                    fields.push(("Subject", s));
                }
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let url = self
                    .subscribe_url
                    .as_deref()
                    .ok_or(Refused::Missing("SubscribeURL"))?;
                fields.push(("SubscribeURL", url));
            }
            _ => return Err(Refused::Malformed("unknown SNS message type".into())),
        }
        fields.push(("Timestamp", &self.timestamp));
        if self.kind != "Notification" {
            let token = self.token.as_deref().ok_or(Refused::Missing("Token"))?;
            fields.push(("Token", token));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.kind));
        let mut s = String::new();
        for (k, v) in fields {
            s.push_str(k);
            s.push('\n');
            s.push_str(v);
            s.push('\n');
        }
        Ok(s)
    }
}

/// Which URLs SNS material may come from.
#[derive(Debug, Clone, Default)]
pub struct UrlRule {
    /// Empty: the AWS rule (https, host `sns.<region>.amazonaws.com[.cn]`, default port).
    /// Otherwise a URL must start with one of these (each should end with `/`).
    pub prefixes: Vec<String>,
}

impl UrlRule {
    /// Whether `url` may be fetched (the certificate also needs a `.pem` path).
    pub fn allows(&self, url: &str, pem: bool) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        if !u.username().is_empty() || u.password().is_some() {
            return false;
        }
        if pem && !u.path().ends_with(".pem") {
            return false;
        }
        if !self.prefixes.is_empty() {
            return self.prefixes.iter().any(|p| url.starts_with(p.as_str()));
        }
        u.scheme() == "https" && u.port().is_none() && u.host_str().is_some_and(aws_sns_host)
    }
}

/// `sns.<region>.amazonaws.com` or `.amazonaws.com.cn`, region of `[a-z0-9-]`.
fn aws_sns_host(host: &str) -> bool {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let Some(region) = rest.and_then(|r| r.strip_prefix("sns.")) else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Verifies SNS messages and confirms subscriptions.
pub struct SnsVerifier {
    http: reqwest::Client,
    rule: UrlRule,
    /// URL → what its certificate gave, with when it was stored (for eviction).
    cache: Mutex<HashMap<String, (Cached, i64)>>,
    fetches: tokio::sync::Semaphore,
}

impl std::fmt::Debug for SnsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsVerifier")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl SnsVerifier {
    pub fn new(rule: UrlRule) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            rule,
            cache: Mutex::new(HashMap::new()),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
        })
    }

    /// Check `m`'s signature (version 2, an allowed certificate URL).
    pub async fn verify(&self, m: &SnsMessage) -> Result<(), Refused> {
        if m.signature_version != "2" {
            return Err(Refused::NotAllowed(
                "SNS SignatureVersion other than 2 (set the topic's SignatureVersion to 2)",
            ));
        }
        if !self.rule.allows(&m.signing_cert_url, true) {
            return Err(Refused::NotAllowed("signing certificate URL"));
        }
        let to_sign = m.string_to_sign()?;
        use base64::Engine;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(m.signature.trim())
            .map_err(|_| Refused::BadSignature)?;
        let key = self.key(&m.signing_cert_url).await?;
        key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(to_sign.as_bytes()),
            &sig,
        )
        .map_err(|_| Refused::BadSignature)
    }

    /// Visit a verified confirmation's SubscribeURL (allowed hosts only).
    pub async fn confirm(&self, m: &SnsMessage) -> Result<(), Refused> {
        let url = m
            .subscribe_url
            .as_deref()
            .ok_or(Refused::Missing("SubscribeURL"))?;
        if !self.rule.allows(url, false) {
            return Err(Refused::NotAllowed("SubscribeURL"));
        }
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Refused::Unavailable(format!("confirming the subscription: {e}")))?;
        if !r.status().is_success() {
            return Err(Refused::Unavailable(format!(
                "confirming the subscription: HTTP {}",
                r.status().as_u16()
            )));
        }
        Ok(())
    }

    async fn key(&self, url: &str) -> Result<RsaPublicKey, Refused> {
        let now = chrono::Utc::now().timestamp();
        match self.cached(url) {
            Some(Cached::Key(k, not_after)) if not_after > now => return Ok(k),
            Some(Cached::Failed(why, until)) if until > now => return Err(why),
            _ => {}
        }
        let Ok(_fetch) = self.fetches.try_acquire() else {
            return Err(Refused::Unavailable(
                "too many SNS certificate fetches in flight".into(),
            ));
        };
        let got = self.fetch(url, now).await;
        let entry = match &got {
            Ok((k, not_after)) => Cached::Key(k.clone(), *not_after),
            // A network failure may pass; anything else about this URL will not soon.
            Err(Refused::Unavailable(_)) => return got.map(|(k, _)| k),
            Err(why) => Cached::Failed(why.clone(), now + FAILURE_TTL_SECS),
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED
                && !c.contains_key(url)
                && let Some(oldest) = c
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(u, _)| u.clone())
            {
                c.remove(&oldest);
            }
            c.insert(url.to_owned(), (entry, now));
        }
        got.map(|(k, _)| k)
    }

    async fn fetch(&self, url: &str, now: i64) -> Result<(RsaPublicKey, i64), Refused> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Refused::Unavailable(format!("fetching the SNS certificate: {e}")))?;
        if !r.status().is_success() {
            return Err(Refused::NotAllowed("signing certificate not found"));
        }
        if r.content_length()
            .is_some_and(|l| l > MAX_CERT_BYTES as u64)
        {
            return Err(Refused::NotAllowed("signing certificate too large"));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| Refused::Unavailable(format!("reading the SNS certificate: {e}")))?;
        if body.len() > MAX_CERT_BYTES {
            return Err(Refused::NotAllowed("signing certificate too large"));
        }
        parse_certificate(&body, now)
    }

    fn cached(&self, url: &str) -> Option<Cached> {
        self.cache.lock().ok()?.get(url).map(|(c, _)| c.clone())
    }
}

/// The RSA key of a PEM certificate valid at `now`, and its notAfter.
pub fn parse_certificate(pem: &[u8], now: i64) -> Result<(RsaPublicKey, i64), Refused> {
    let cert = Certificate::from_pem(pem)
        .map_err(|_| Refused::NotAllowed("signing certificate unreadable"))?;
    let v = &cert.tbs_certificate.validity;
    let not_before = v.not_before.to_unix_duration().as_secs() as i64;
    let not_after = v.not_after.to_unix_duration().as_secs() as i64;
    if now < not_before || now > not_after {
        return Err(Refused::NotAllowed(
            "signing certificate outside its validity",
        ));
    }
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| Refused::NotAllowed("signing certificate unreadable"))?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| Refused::NotAllowed("signing certificate is not RSA"))?;
    Ok((key, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: &str) -> SnsMessage {
        SnsMessage {
            kind: kind.into(),
            message_id: "m-1".into(),
            topic_arn: "arn:aws:sns:eu-west-1:123456789012:ses-events".into(),
            subject: None,
            message: "{}".into(),
            timestamp: "2026-11-23T10:00:00.000Z".into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem"
                .into(),
            subscribe_url: Some("https://sns.eu-west-1.amazonaws.com/?Action=Confirm".into()),
            token: Some("tok".into()),
        }
    }

    #[test]
    fn the_string_to_sign_follows_the_message_type() {
        let n = msg("Notification");
        assert_eq!(
            n.string_to_sign().unwrap(),
            "Message\n{}\nMessageId\nm-1\nTimestamp\n2026-11-23T10:00:00.000Z\n\
             TopicArn\narn:aws:sns:eu-west-1:123456789012:ses-events\nType\nNotification\n"
        );
        let mut with_subject = n.clone();
        with_subject.subject = Some("Hi".into());
        assert!(
            with_subject
                .string_to_sign()
                .unwrap()
                .contains("MessageId\nm-1\nSubject\nHi\nTimestamp\n")
        );
        let c = msg("SubscriptionConfirmation").string_to_sign().unwrap();
        assert!(c.contains(
            "SubscribeURL\nhttps://sns.eu-west-1.amazonaws.com/?Action=Confirm\n\
             Timestamp\n2026-11-23T10:00:00.000Z\nToken\ntok\nTopicArn\n"
        ));
        assert!(matches!(
            msg("Other").string_to_sign(),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn only_aws_sns_hosts_over_https_serve_certificates_by_default() {
        let r = UrlRule::default();
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        ] {
            assert!(r.allows(ok, true), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://s3.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "not a url",
        ] {
            assert!(!r.allows(bad, true), "{bad}");
        }
        let local = UrlRule {
            prefixes: vec!["http://127.0.0.1:9/".into()],
        };
        assert!(local.allows("http://127.0.0.1:9/c.pem", true));
        assert!(!local.allows("http://127.0.0.1:10/c.pem", true));
        assert!(!local.allows("https://sns.us-east-1.amazonaws.com/x.pem", true));
    }
}
