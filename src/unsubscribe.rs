//! One-click unsubscribe links (RFC 8058) for bulk email: a signed, expiring token naming the
//! recipient, its tenant and, for scheduled email, the schedule (whose audience it leaves).
//!
//! Token: `base64url(payload) . base64url(HMAC-SHA256(secret, payload))`, payload the JSON
//! array `[2, <expires unix s>, <schedule id or null>, <tenant or null>, "<address>"]`. JSON
//! keeps every field apart whatever it holds. The address is the recipient's own; the
//! signature makes the link unforgeable, the expiry bounds its life.
//!
//! Links made before version 2 carry `v1|<expires>|<schedule>|<tenant>|<address>`. They are
//! still honoured, except one whose address part holds a `|`: a tenant with a `|` (allowed
//! then, refused now) made such a token ambiguous, so it is refused as tampered.

use crate::config::Secret;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a valid token says.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims {
    pub address: String,
    pub tenant: Option<String>,
    pub schedule_id: Option<i64>,
    pub expires: i64,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("tenant", &self.tenant)
            .field("schedule_id", &self.schedule_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the link is not valid")]
    Tampered,
    #[error("the link has expired")]
    Expired,
}

fn mac(secret: &Secret, payload: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes any key length");
    m.update(payload);
    m
}

/// The shortest secret that may sign links: 32 bytes, the HMAC-SHA256 key size, so a
/// guessable word cannot forge unsubscribes.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuse a secret shorter than [`MIN_SECRET_LEN`], saying how to make one.
pub fn check_secret(secret: &Secret) -> Result<(), String> {
    if secret.expose().len() < MIN_SECRET_LEN {
        return Err(format!(
            "MAILFLEET_UNSUBSCRIBE_SECRET is {} bytes; it must be at least {MIN_SECRET_LEN} \
             (for example the output of `openssl rand -hex 32`)",
            secret.expose().len()
        ));
    }
    Ok(())
}

/// Makes links; workers hold one when `MAILFLEET_UNSUBSCRIBE_URL` and `_SECRET` are set.
#[derive(Clone)]
pub struct Links {
    pub base_url: String,
    pub secret: Secret,
    pub ttl_secs: i64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Links {
    pub fn token(&self, c: &Claims) -> String {
        let payload =
            serde_json::json!([2, c.expires, c.schedule_id, c.tenant.as_deref(), c.address])
                .to_string();
        let sig = mac(&self.secret, payload.as_bytes())
            .finalize()
            .into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(sig))
    }

    /// The link for `address` (lowercased) of a job, valid for the configured time from `now`.
    pub fn url(
        &self,
        address: &str,
        tenant: Option<&str>,
        schedule_id: Option<i64>,
        now: i64,
    ) -> String {
        let c = Claims {
            address: address.to_lowercase(),
            tenant: tenant.map(str::to_owned),
            schedule_id,
            expires: now + self.ttl_secs,
        };
        format!(
            "{}/v1/unsubscribe/{}",
            self.base_url.trim_end_matches('/'),
            self.token(&c)
        )
    }
}

/// Check a token's signature (constant time) and expiry.
pub fn verify(secret: &Secret, token: &str, now: i64) -> Result<Claims, Invalid> {
    let (p, s) = token.split_once('.').ok_or(Invalid::Tampered)?;
    let payload = B64.decode(p).map_err(|_| Invalid::Tampered)?;
    let sig = B64.decode(s).map_err(|_| Invalid::Tampered)?;
    mac(secret, &payload)
        .verify_slice(&sig)
        .map_err(|_| Invalid::Tampered)?;
    let text = String::from_utf8(payload).map_err(|_| Invalid::Tampered)?;
    let claims = if text.starts_with('[') {
        v2(&text)?
    } else {
        v1(&text)?
    };
    if now > claims.expires {
        return Err(Invalid::Expired);
    }
    Ok(claims)
}

fn v2(text: &str) -> Result<Claims, Invalid> {
    let (version, expires, schedule_id, tenant, address): (
        u8,
        i64,
        Option<i64>,
        Option<String>,
        String,
    ) = serde_json::from_str(text).map_err(|_| Invalid::Tampered)?;
    if version != 2 {
        return Err(Invalid::Tampered);
    }
    Ok(Claims {
        address,
        tenant: tenant.filter(|t| !t.is_empty()),
        schedule_id,
        expires,
    })
}

/// A link made before version 2 (see the module's doc).
fn v1(text: &str) -> Result<Claims, Invalid> {
    let mut parts = text.splitn(5, '|');
    let (Some("v1"), Some(exp), Some(sched), Some(tenant), Some(address)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Invalid::Tampered);
    };
    if address.contains('|') {
        return Err(Invalid::Tampered);
    }
    let expires: i64 = exp.parse().map_err(|_| Invalid::Tampered)?;
    Ok(Claims {
        address: address.to_owned(),
        tenant: Some(tenant.to_owned()).filter(|t| !t.is_empty()),
        schedule_id: if sched.is_empty() {
            None
        } else {
            Some(sched.parse().map_err(|_| Invalid::Tampered)?)
        },
        expires,
    })
}

/// The schedule a fan-out job came from, by its idempotency key `sched:<id>:<tick>:<member>`.
pub fn schedule_of(idempotency_key: Option<&str>) -> Option<i64> {
    idempotency_key?
        .strip_prefix("sched:")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Links {
        Links {
            base_url: "https://mail.example.com/".into(),
            secret: Secret::new("s3cret"),
            ttl_secs: 100,
        }
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_not_once_changed() {
        let l = links();
        let url = l.url("Ada@Example.com", Some("acme"), Some(7), 1000);
        let token = url.rsplit('/').next().unwrap();
        assert!(url.starts_with("https://mail.example.com/v1/unsubscribe/"));
        let c = verify(&l.secret, token, 1050).unwrap();
        assert_eq!(
            (c.address.as_str(), c.tenant.as_deref(), c.schedule_id),
            ("ada@example.com", Some("acme"), Some(7))
        );
        assert_eq!(verify(&l.secret, token, 1101), Err(Invalid::Expired));
        assert_eq!(
            verify(&Secret::new("other"), token, 1050),
            Err(Invalid::Tampered)
        );
        // Another address under the same signature.
        let (_, sig) = token.split_once('.').unwrap();
        let forged = format!("{}.{sig}", B64.encode("v1|9999|7|acme|eve@example.com"));
        assert_eq!(verify(&l.secret, &forged, 1050), Err(Invalid::Tampered));
        assert_eq!(schedule_of(Some("sched:12:1700000000000:5")), Some(12));
        assert_eq!(schedule_of(Some("order-1")), None);
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        assert!(
            check_secret(&Secret::new("s3cret"))
                .unwrap_err()
                .contains("at least 32")
        );
        assert!(check_secret(&Secret::new("k".repeat(32))).is_ok());
    }

    fn signed(l: &Links, payload: &str) -> String {
        let sig = mac(&l.secret, payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(sig))
    }

    #[test]
    fn a_tenant_or_address_with_a_pipe_cannot_name_anyone_else() {
        let l = links();
        // Version 2 keeps the fields apart whatever they hold.
        let c = Claims {
            address: "a@example.com".into(),
            tenant: Some("acme|zz".into()),
            schedule_id: None,
            expires: 2000,
        };
        let back = verify(&l.secret, &l.token(&c), 1000).unwrap();
        assert_eq!(back, c);
        // A version-1 link with a `|` in its tenant read as tenant `acme` and address
        // `zz|a@example.com`: it is refused now.
        let old = signed(&l, "v1|2000||acme|zz|a@example.com");
        assert_eq!(verify(&l.secret, &old, 1000), Err(Invalid::Tampered));
        // An ordinary version-1 link still works.
        let old = signed(&l, "v1|2000|7|acme|a@example.com");
        let c = verify(&l.secret, &old, 1000).unwrap();
        assert_eq!(
            (c.address.as_str(), c.tenant.as_deref(), c.schedule_id),
            ("a@example.com", Some("acme"), Some(7))
        );
        let bad_version = signed(&l, r#"[3,2000,null,null,"a@example.com"]"#);
        assert_eq!(
            verify(&l.secret, &bad_version, 1000),
            Err(Invalid::Tampered)
        );
        assert_eq!(schedule_of(Some("order-1")), None);
    }
}
