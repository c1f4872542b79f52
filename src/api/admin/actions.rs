//! The admin page's actions: every one a POST behind [`authorize`] (an admin, and for a
//! browser session the right CSRF token), answering with a redirect and a fixed flash code.

use super::markup::{done, failed};
use super::session::authorize;
use super::{AdminState, MAX_REPLAYS, S};
use crate::dlq;
use crate::domain::{Address, Lane};
use crate::store::suppressions::{self, Suppression};
use crate::stream::{self, pause::Scope};
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use std::collections::HashMap;

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map(|s| s.trim()).unwrap_or("")
}

pub(super) async fn replay(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f).await {
        return r;
    }
    let (Ok(partition), id) = (field(&f, "partition").parse::<u16>(), field(&f, "id")) else {
        return done("missing");
    };
    if partition >= s.keys.partitions() || id.is_empty() {
        return done("missing");
    }
    let mut conn = match s.redis.get().await {
        Ok(c) => c,
        Err(e) => return failed("Replay", e),
    };
    let entry = match dlq::get(&mut *conn, &s.keys, partition, id).await {
        Ok(Some(e)) => e,
        Ok(None) => return done("missing"),
        Err(e) => return failed("Replay", e),
    };
    match dlq::replay(&mut *conn, &s.pg, &s.keys, &[entry], MAX_REPLAYS, 100).await {
        Ok(r) => {
            tracing::info!(
                replayed = r.replayed,
                refused = r.refused,
                already_final = r.already_final,
                "admin: dead letter replay"
            );
            done(if r.replayed > 0 {
                "replayed"
            } else if r.already_final > 0 {
                "final"
            } else if r.refused > 0 {
                "refused"
            } else {
                "missing"
            })
        }
        Err(e) => failed("Replay", e),
    }
}

pub(super) async fn suppress_add(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f).await {
        return r;
    }
    let Ok(addr) = Address::parse(field(&f, "address")) else {
        return done("bad-address");
    };
    let tenant = field(&f, "tenant");
    if !tenant.is_empty() && crate::domain::check_tenant(tenant).is_err() {
        return done("bad-tenant");
    }
    let note = field(&f, "note");
    let row = Suppression {
        address: addr.as_str().to_lowercase(),
        tenant: tenant.to_owned(),
        reason: "manual".into(),
        note: Some(if note.is_empty() {
            "admin page".into()
        } else {
            note.chars().take(200).collect()
        }),
        expires_at: None,
        created_at: Utc::now(),
    };
    match suppressions::add(&s.pg, &[row]).await {
        Ok(_) => {
            tracing::info!("admin: suppression added");
            done("suppression-added")
        }
        Err(e) => failed("Adding the suppression", e),
    }
}

pub(super) async fn suppress_remove(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorize(&s, &headers, &f).await {
        return r;
    }
    match suppressions::remove(&s.pg, field(&f, "address"), field(&f, "tenant")).await {
        Ok(true) => {
            tracing::info!("admin: suppression removed");
            done("unsuppressed")
        }
        Ok(false) => done("no-such-suppression"),
        Err(e) => failed("Removing the suppression", e),
    }
}

/// A scope and name from a pause form, checked (a lane must be one).
fn pause_target(f: &HashMap<String, String>) -> Option<(Scope, String)> {
    let name = field(f, "name");
    if name.is_empty()
        || name.len() > 100
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return None;
    }
    let scope = match field(f, "scope") {
        "lane" => {
            name.parse::<Lane>().ok()?;
            Scope::Lane
        }
        "provider" => Scope::Provider,
        "tenant" => {
            crate::domain::check_tenant(name).ok()?;
            Scope::Tenant
        }
        _ => return None,
    };
    Some((scope, name.to_owned()))
}

pub(super) async fn pause(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    set_pause(&s, &headers, &f, true).await
}

pub(super) async fn resume(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    set_pause(&s, &headers, &f, false).await
}

async fn set_pause(
    s: &AdminState,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
    on: bool,
) -> Response {
    if let Some(r) = authorize(s, headers, f).await {
        return r;
    }
    let Some((scope, name)) = pause_target(f) else {
        return done("bad-pause");
    };
    let mut conn = match s.redis.get().await {
        Ok(c) => c,
        Err(e) => return failed("Pausing", e),
    };
    let r = if on {
        stream::pause::set(&mut *conn, &s.keys, scope, &name).await
    } else {
        stream::pause::clear(&mut *conn, &s.keys, scope, &name).await
    };
    match r {
        Ok(changed) => {
            tracing::info!(scope = scope.as_str(), on, "admin: pause changed");
            done(match (on, changed) {
                (true, _) => "paused",
                (false, true) => "resumed",
                (false, false) => "not-paused",
            })
        }
        Err(e) => failed(if on { "Pausing" } else { "Resuming" }, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_forms_are_checked() {
        let f = |scope: &str, name: &str| {
            HashMap::from([
                ("scope".to_owned(), scope.to_owned()),
                ("name".to_owned(), name.to_owned()),
            ])
        };
        assert_eq!(
            pause_target(&f("lane", "bulk")),
            Some((Scope::Lane, "bulk".into()))
        );
        assert_eq!(pause_target(&f("lane", "nope")), None);
        assert_eq!(
            pause_target(&f("tenant", "acme")),
            Some((Scope::Tenant, "acme".into()))
        );
        assert_eq!(pause_target(&f("tenant", "a:b")), None);
        assert_eq!(pause_target(&f("tenant", "")), None);
        assert_eq!(pause_target(&f("tenant", "a|b")), None);
        assert_eq!(pause_target(&f("everything", "x")), None);
    }
}
