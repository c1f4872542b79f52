//! `mailfleet suppress add|rm|list|import`: the suppression list. Addresses are validated with
//! the same parser as a job's recipients; output never echoes an address unless asked to
//! (`list` shows them: it is the operator's own list).

use crate::config::Global;
use crate::domain::Address;
use crate::store::{
    self,
    suppressions::{self, REASONS, Suppression},
};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SuppressCmd {
    /// Suppress an address (for every tenant unless --tenant).
    Add {
        address: String,
        /// bounce, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
        #[arg(long, value_parser = crate::domain::parse_tenant)]
        tenant: Option<String>,
        /// Lift it after this long (`30d`, `12h`) or at this RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Lift an address's suppression (the every-tenant row unless --tenant).
    Rm {
        address: String,
        #[arg(long, value_parser = crate::domain::parse_tenant)]
        tenant: Option<String>,
    },
    /// Suppressions, newest first.
    List {
        #[arg(long, value_parser = crate::domain::parse_tenant)]
        tenant: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Import a CSV with a header row: `email` (or `address`; required), `reason`, `tenant`,
    /// `expires_at` (RFC 3339), `note`. All or nothing: one bad row imports none. `-` reads
    /// stdin.
    Import { file: PathBuf },
}

fn expiry(s: Option<&str>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let Some(s) = s else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let secs = crate::domain::parse_span(s)
        .with_context(|| format!("--expires {s:?}: an RFC 3339 time or a span like 30d"))?;
    Ok(Some(Utc::now() + chrono::Duration::seconds(secs)))
}

/// A validated row; errors never repeat the address.
fn row(
    address: &str,
    reason: &str,
    tenant: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    note: Option<String>,
) -> anyhow::Result<Suppression> {
    let a = Address::parse(address.trim()).map_err(|e| anyhow::anyhow!("not an address: {e}"))?;
    if !REASONS.contains(&reason) {
        bail!("reason must be one of {}", REASONS.join(", "));
    }
    if let Some(t) = tenant {
        crate::domain::check_tenant(t).map_err(|e| anyhow::anyhow!("the tenant name {e}"))?;
    }
    Ok(Suppression {
        address: a.as_str().to_lowercase(),
        tenant: tenant.unwrap_or("").to_owned(),
        reason: reason.to_owned(),
        note,
        expires_at,
        created_at: Utc::now(),
    })
}

fn import(reader: impl std::io::Read) -> anyhow::Result<Vec<Suppression>> {
    let mut csv = csv::Reader::from_reader(reader);
    let headers = csv.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    // `email` (as an audience's CSV has it) or `address`.
    let address = col("email")
        .or_else(|| col("address"))
        .context("the CSV needs an `email` (or `address`) column")?;
    let (reason, tenant, expires, note) =
        (col("reason"), col("tenant"), col("expires_at"), col("note"));
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in csv.records().enumerate() {
        let line = i + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let get = |c: Option<usize>| {
            c.and_then(|c| rec.get(c))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let exp = match get(expires).map(DateTime::parse_from_rfc3339).transpose() {
            Ok(t) => t.map(|t| t.with_timezone(&Utc)),
            Err(_) => {
                errors.push(format!("line {line}: expires_at is not RFC 3339"));
                continue;
            }
        };
        match row(
            get(Some(address)).unwrap_or(""),
            get(reason).unwrap_or("manual"),
            get(tenant),
            exp,
            get(note).map(str::to_owned),
        ) {
            Ok(r) => rows.push(r),
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&String> = errors.iter().take(20).collect();
        bail!(
            "{} bad rows, nothing imported:\n{}",
            errors.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(rows)
}

pub async fn run(g: Global, c: SuppressCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pool).await?;
    match c {
        SuppressCmd::Add {
            address,
            reason,
            tenant,
            expires,
            note,
        } => {
            let r = row(
                &address,
                &reason,
                tenant.as_deref(),
                expiry(expires.as_deref())?,
                note,
            )?;
            suppressions::add(&pool, &[r]).await?;
            println!("suppressed ({reason})");
        }
        SuppressCmd::Rm { address, tenant } => {
            let a = address.trim().to_lowercase();
            if suppressions::remove(&pool, &a, tenant.as_deref().unwrap_or("")).await? {
                println!("lifted");
            } else {
                // Say where the address is suppressed, if anywhere else.
                let here = tenant.clone().unwrap_or_default();
                let mut elsewhere: Vec<String> =
                    suppressions::active(&pool, std::slice::from_ref(&a))
                        .await?
                        .into_iter()
                        .filter(|(_, t)| *t != here)
                        .map(|(_, t)| {
                            if t.is_empty() {
                                "for every tenant (no --tenant)".to_owned()
                            } else {
                                format!("--tenant {t}")
                            }
                        })
                        .collect();
                elsewhere.sort();
                if elsewhere.is_empty() {
                    bail!(
                        "no such suppression: the address is not suppressed {}",
                        match &tenant {
                            Some(t) => format!("for tenant {t}"),
                            None => "for every tenant".to_owned(),
                        }
                    );
                }
                bail!(
                    "no such suppression {}; the address is suppressed {}",
                    match &tenant {
                        Some(t) => format!("for tenant {t}"),
                        None => "for every tenant".to_owned(),
                    },
                    elsewhere.join(", ")
                );
            }
        }
        SuppressCmd::List {
            tenant,
            reason,
            limit,
            json,
        } => {
            let rows =
                suppressions::list(&pool, tenant.as_deref(), reason.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<40} {:<12} {:<12} {:<25} note",
                    "address", "tenant", "reason", "expires"
                );
                for r in rows {
                    println!(
                        "{:<40} {:<12} {:<12} {:<25} {}",
                        r.address,
                        if r.tenant.is_empty() { "*" } else { &r.tenant },
                        r.reason,
                        r.expires_at.map_or("never".into(), |t| t.to_rfc3339()),
                        r.note.as_deref().unwrap_or("")
                    );
                }
            }
        }
        SuppressCmd::Import { file } => {
            let rows = if file.as_os_str() == "-" {
                import(std::io::stdin())?
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?;
                import(std::io::BufReader::new(f))?
            };
            let n = suppressions::add(&pool, &rows).await?;
            println!("{} rows read, {n} suppressions written", rows.len());
        }
    }
    Ok(())
}
