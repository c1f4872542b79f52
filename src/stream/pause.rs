//! Pauses by lane, provider or tenant: one Redis hash, `<prefix>:paused`, with fields
//! `lane:<tx|bulk>`, `provider:<name>`, `tenant:<name>` and the unix ms each began. Workers
//! read it every 500 ms (`worker::pause_loop`), so a pause is honoured within a second.

use super::Keys;
use crate::domain::Lane;
use std::collections::{HashMap, HashSet};

/// What can be paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scope {
    Lane,
    Provider,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Lane => "lane",
            Scope::Provider => "provider",
            Scope::Tenant => "tenant",
        }
    }
}

/// The pauses in force, as a worker uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses {
    pub lanes: HashSet<Lane>,
    pub providers: HashSet<String>,
    /// Tenant -> unix ms the pause began.
    pub tenants: HashMap<String, i64>,
    /// Every pause with when it began, for metrics and status: (scope, name, since ms).
    pub all: Vec<(String, String, i64)>,
}

impl Pauses {
    pub fn lane(&self, lane: Lane) -> bool {
        self.lanes.contains(&lane)
    }
    pub fn provider(&self, name: &str) -> bool {
        self.providers.contains(name)
    }
    /// Since when (unix ms) this tenant is paused, if it is.
    pub fn tenant(&self, tenant: Option<&str>) -> Option<i64> {
        self.tenants.get(tenant?).copied()
    }
}

pub async fn set<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    scope: Scope,
    name: &str,
) -> redis::RedisResult<bool> {
    let added: i64 = redis::cmd("HSETNX")
        .arg(keys.paused())
        .arg(format!("{}:{name}", scope.as_str()))
        .arg(chrono::Utc::now().timestamp_millis())
        .query_async(conn)
        .await?;
    Ok(added == 1)
}

pub async fn clear<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    scope: Scope,
    name: &str,
) -> redis::RedisResult<bool> {
    let removed: i64 = redis::cmd("HDEL")
        .arg(keys.paused())
        .arg(format!("{}:{name}", scope.as_str()))
        .query_async(conn)
        .await?;
    Ok(removed == 1)
}

pub async fn read<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Pauses> {
    let fields: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.paused())
        .query_async(conn)
        .await?;
    let mut p = Pauses::default();
    let mut all: Vec<(String, String, i64)> = Vec::new();
    for (field, since) in fields {
        let Some((scope, name)) = field.split_once(':') else {
            continue;
        };
        match scope {
            "lane" => match name.parse::<Lane>() {
                Ok(l) => {
                    p.lanes.insert(l);
                }
                Err(_) => continue,
            },
            "provider" => {
                p.providers.insert(name.to_owned());
            }
            "tenant" => {
                p.tenants.insert(name.to_owned(), since);
            }
            _ => continue,
        }
        all.push((scope.to_owned(), name.to_owned(), since));
    }
    all.sort();
    p.all = all;
    Ok(p)
}
