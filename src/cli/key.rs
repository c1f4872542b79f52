//! `mailfleet key create|list|revoke`: API keys bound to a tenant and scopes. A key is shown
//! once, when it is made; Postgres keeps only its SHA-256 and its first characters.

use crate::config::Global;
use crate::store::{self, api_keys};
use anyhow::bail;
use clap::Subcommand;
use sha2::{Digest, Sha256};

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Make a key and print it (once: it cannot be shown again).
    Create {
        /// The tenant it sends and reads as; without it, every tenant (an operator's key).
        #[arg(long, value_parser = crate::domain::parse_tenant)]
        tenant: Option<String>,
        /// What it may do: `send`, `read`, or both (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "send,read")]
        scope: Vec<String>,
        /// A label for listings.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every key: prefix, tenant, scopes, when made and revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id or prefix; the API refuses it within 5 seconds.
    Revoke { key: String },
}

/// The characters of a key shown in listings.
const PREFIX_LEN: usize = 12;

pub async fn run(g: Global, c: KeyCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pool).await?;
    match c {
        KeyCmd::Create {
            tenant,
            scope,
            name,
        } => {
            let mut scopes: Vec<String> = Vec::new();
            for s in scope.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                if !api_keys::SCOPES.contains(&s) {
                    bail!(
                        "--scope {s:?}: a scope is one of {}",
                        api_keys::SCOPES.join(", ")
                    );
                }
                if !scopes.iter().any(|x| x == s) {
                    scopes.push(s.to_owned());
                }
            }
            if scopes.is_empty() {
                bail!(
                    "--scope: give at least one of {}",
                    api_keys::SCOPES.join(", ")
                );
            }
            if name.chars().any(char::is_control) || name.len() > 100 {
                bail!("--name: at most 100 characters, none of them control characters");
            }
            let key = format!("mfk_{}", hex::encode(rand::random::<[u8; 24]>()));
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let row = api_keys::create(
                &pool,
                &hash,
                &key[..PREFIX_LEN],
                &name,
                tenant.as_deref(),
                &scopes,
            )
            .await?;
            println!("{key}");
            eprintln!(
                "key {} ({}), tenant {}, scopes {}: keep it now, it is not shown again",
                row.id,
                row.prefix,
                row.tenant.as_deref().unwrap_or("*"),
                row.scopes.join(",")
            );
        }
        KeyCmd::List { json } => {
            let rows = api_keys::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<38} {:<13} {:<20} {:<10} {:<20} revoked",
                    "id", "prefix", "tenant", "scopes", "created"
                );
                for r in rows {
                    println!(
                        "{:<38} {:<13} {:<20} {:<10} {:<20} {}",
                        r.id,
                        r.prefix,
                        r.tenant.as_deref().unwrap_or("*"),
                        r.scopes.join(","),
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        r.revoked_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        KeyCmd::Revoke { key } => {
            if api_keys::revoke(&pool, key.trim()).await? == 1 {
                println!("revoked {key}; the API refuses it within 5 seconds");
            } else {
                bail!("no live key has the id or prefix {key:?} (or the prefix names several)");
            }
        }
    }
    Ok(())
}
