//! Who may use the admin page: signed session cookies (HMAC-SHA256 keyed by the admin token,
//! so changing the token ends every session), `Authorization: Bearer` for scripts, the CSRF
//! token of a session, and constant-time token checks.

use super::markup::{Markup, page};
use super::{AdminState, COOKIE, SECURE_COOKIE, SESSION_SECS};
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

/// The session cookie's name: `__Host-` (the browser keeps it only if it is `Secure`, for
/// `Path=/` and this host alone) unless the insecure opt-out is set for plain-HTTP
/// development.
pub(super) fn cookie_name(s: &AdminState) -> &'static str {
    if s.secure_cookie {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

pub(super) fn cookie<'h>(s: &AdminState, headers: &'h HeaderMap) -> Option<&'h str> {
    let name = cookie_name(s);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The key that marks a session signed out (by its nonce), for every API replica.
fn revoked_key(s: &AdminState, session: &str) -> String {
    let nonce = session.split('.').nth(1).unwrap_or("");
    format!("{}:admin:signed-out:{nonce}", s.keys.prefix())
}

/// Mark `session` signed out until it would have expired anyway.
pub(super) async fn revoke(s: &AdminState, session: &str) -> Result<(), String> {
    let exp: i64 = session
        .split('.')
        .next()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let left = (exp - Utc::now().timestamp()).clamp(1, SESSION_SECS + 60);
    let mut c = s.redis.get().await.map_err(|e| e.to_string())?;
    redis::cmd("SET")
        .arg(revoked_key(s, session))
        .arg(1)
        .arg("EX")
        .arg(left)
        .query_async::<()>(&mut *c)
        .await
        .map_err(|e| e.to_string())
}

/// Token guesses (sign-ins and bearer requests) allowed per minute, cluster-wide.
pub(super) const TOKEN_TRIES_PER_MINUTE: i64 = 10;

/// Count one token attempt in this minute's cluster-wide counter; false when the minute's
/// allowance is spent (or Redis cannot count). Counted before the token is compared, so
/// parallel guesses are throttled too, and over the allowance even the right token is refused:
/// otherwise the answer would still tell a right guess from a wrong one.
pub(super) async fn token_attempt_allowed(s: &AdminState) -> bool {
    let minute = Utc::now().timestamp() / 60;
    let key = format!("{}:admin:token-tries:{minute}", s.keys.prefix());
    let Ok(mut c) = s.redis.get().await else {
        return false;
    };
    let n: redis::RedisResult<(i64,)> = redis::pipe()
        .cmd("INCR")
        .arg(&key)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(120)
        .ignore()
        .query_async(&mut *c)
        .await;
    matches!(n, Ok((n,)) if n <= TOKEN_TRIES_PER_MINUTE)
}

/// Who is asking: a bearer token (throttled, [`token_attempt_allowed`]) or a session that is
/// signed, unexpired and not signed out. `Err` is an answer to give instead (429).
pub(super) async fn authenticate(
    s: &AdminState,
    headers: &HeaderMap,
) -> Result<Option<Auth>, Response> {
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        if !token_attempt_allowed(s).await {
            return Err(too_many());
        }
        return Ok(token_matches(&s.token, b.trim()).then_some(Auth::Bearer));
    }
    let Some(c) = cookie(s, headers) else {
        return Ok(None);
    };
    if !valid_session(&s.token, c, Utc::now().timestamp()) {
        return Ok(None);
    }
    // Signed out on any replica? Without an answer from Redis the session is refused.
    let signed_out = match s.redis.get().await {
        Ok(mut conn) => redis::cmd("EXISTS")
            .arg(revoked_key(s, c))
            .query_async::<i64>(&mut *conn)
            .await
            .map_or(true, |n| n > 0),
        Err(_) => true,
    };
    Ok((!signed_out).then(|| Auth::Session(c.to_owned())))
}

/// The answer to a token attempt over the minute's allowance.
pub(super) fn too_many() -> Response {
    let mut r = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        Markup::new()
            .raw("<p>Too many admin token attempts this minute. Wait a minute and try again.</p>"),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("60"),
    );
    r
}

/// The gate of every action: an admin, and for a browser session the right CSRF token.
/// `Some` is the refusal to answer with.
pub(super) async fn authorize(
    s: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Response> {
    match authenticate(s, headers).await {
        Err(r) => Some(r),
        Ok(None) => Some(page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            Markup::new().raw("<p><a href=\"/admin/login\">Sign in</a></p>"),
        )),
        Ok(Some(Auth::Bearer)) => None,
        Ok(Some(Auth::Session(sess))) => {
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
