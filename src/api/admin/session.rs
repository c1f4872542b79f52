//! Who may use the admin page: signed session cookies (HMAC-SHA256 keyed by the admin token,
//! so changing the token ends every session), `Authorization: Bearer` for scripts, the CSRF
//! token of a session, and constant-time token checks.

use super::markup::{Markup, page};
use super::{AdminState, COOKIE, SESSION_SECS};
use crate::domain::Secret;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;

fn mac(token: &Secret, parts: &[&str]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()).expect("HMAC takes any key");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"|");
    }
    m
}

/// A new session value: `<expires>.<nonce>.<signature>`.
pub fn new_session(token: &Secret, now: i64) -> String {
    let exp = (now + SESSION_SECS).to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let sig = hex::encode(
        mac(token, &["session", &exp, &nonce])
            .finalize()
            .into_bytes(),
    );
    format!("{exp}.{nonce}.{sig}")
}

/// Whether `v` is a session this token signed that has not expired.
pub fn valid_session(token: &Secret, v: &str, now: i64) -> bool {
    let mut it = v.splitn(3, '.');
    let (Some(exp), Some(nonce), Some(sig)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let Ok(e) = exp.parse::<i64>() else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    e >= now
        && mac(token, &["session", exp, nonce])
            .verify_slice(&sig)
            .is_ok()
}

/// The CSRF token of a session.
pub fn csrf_for(token: &Secret, session: &str) -> String {
    hex::encode(mac(token, &["csrf", session]).finalize().into_bytes())
}

pub(super) fn csrf_ok(token: &Secret, session: &str, given: &str) -> bool {
    hex::decode(given).is_ok_and(|g| mac(token, &["csrf", session]).verify_slice(&g).is_ok())
}

/// Constant-time equality of a presented token and the admin token: HMACs of both under a
/// fixed key, compared by `verify_slice`.
pub(super) fn token_matches(token: &Secret, given: &str) -> bool {
    let digest = |b: &[u8]| {
        let mut m =
            Hmac::<Sha256>::new_from_slice(b"mailfleet-admin-token").expect("HMAC takes any key");
        m.update(b);
        m
    };
    let expected = digest(token.expose().as_bytes()).finalize().into_bytes();
    digest(given.as_bytes()).verify_slice(&expected).is_ok()
}

pub(super) enum Auth {
    Session(String),
    Bearer,
}

pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

pub(super) fn authenticate(s: &AdminState, headers: &HeaderMap) -> Option<Auth> {
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return token_matches(&s.token, b.trim()).then_some(Auth::Bearer);
    }
    let c = cookie(headers)?;
    valid_session(&s.token, c, Utc::now().timestamp()).then(|| Auth::Session(c.to_owned()))
}

/// The gate of every action: an admin, and for a browser session the right CSRF token.
/// `Some` is the refusal to answer with.
pub(super) fn authorize(
    s: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Response> {
    match authenticate(s, headers) {
        None => Some(page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            Markup::new().raw("<p><a href=\"/admin/login\">Sign in</a></p>"),
        )),
        Some(Auth::Bearer) => None,
        Some(Auth::Session(sess)) => {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if csrf_ok(&s.token, &sess, given) {
                None
            } else {
                tracing::warn!("admin: an action without a valid CSRF token was refused");
                Some(page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    Markup::new().raw(
                        "<p>The form's CSRF token is missing or wrong. Reload the page and try again.</p>",
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_until_they_expire_and_not_under_another_token() {
        let t = Secret::new("admin-token");
        let v = new_session(&t, 1_000);
        assert!(valid_session(&t, &v, 1_000 + SESSION_SECS));
        assert!(!valid_session(&t, &v, 1_001 + SESSION_SECS), "expired");
        assert!(
            !valid_session(&Secret::new("other"), &v, 1_000),
            "another token"
        );
        let (exp, rest) = v.split_once('.').unwrap();
        let longer = format!("{}.{rest}", exp.parse::<i64>().unwrap() + 1_000_000);
        assert!(!valid_session(&t, &longer, 1_000), "an extended expiry");
        assert!(!valid_session(&t, "garbage", 1_000));
        let csrf = csrf_for(&t, &v);
        assert!(csrf_ok(&t, &v, &csrf));
        assert!(
            !csrf_ok(&t, &new_session(&t, 1_000), &csrf),
            "another session"
        );
        assert!(!csrf_ok(&t, &v, ""));
        assert!(token_matches(&t, "admin-token"));
        assert!(!token_matches(&t, "admin-toke"));
        assert!(!token_matches(&t, ""));
    }
}
