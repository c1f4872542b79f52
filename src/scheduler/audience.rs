//! Importing audience members from CSV: streamed in chunks inside one transaction, so a file of
//! any size is never held in memory whole and an import with a bad row changes nothing.
//!
//! The header row names the columns: `email` (required), `subscribed` (optional: true/false,
//! yes/no, 1/0; default true), and any other column becomes a template variable of that name
//! for the member. Addresses go through [`Address::parse`], the same parser the worker uses.

use crate::domain::Address;
use crate::store::{StoreError, audiences};
use sqlx::PgPool;
use std::io::Read;

/// Rows per insert statement.
const CHUNK: usize = 5000;
/// Bad rows reported before the import gives up listing them.
const MAX_REPORTED: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no audience named {0:?}; create it with `mailfleet audience create`")]
    NoAudience(String),
    #[error("the CSV has no `email` column (columns: {0})")]
    NoEmailColumn(String),
    #[error("the CSV cannot be read: {0}")]
    Csv(#[from] csv::Error),
    #[error("{count} bad row(s); nothing was imported:\n{report}")]
    BadRows { count: usize, report: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Rows read (excluding the header).
    pub rows: u64,
    /// Members inserted or updated.
    pub written: u64,
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" | "y" | "t" => Some(true),
        "false" | "no" | "0" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// Import members into the audience `name` from CSV text. A member already present (same
/// address) has its vars and subscribed flag replaced.
pub async fn import<R: Read>(pg: &PgPool, name: &str, input: R) -> Result<Imported, ImportError> {
    let audience = audiences::get(pg, name)
        .await?
        .ok_or_else(|| ImportError::NoAudience(name.to_owned()))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input);
    let headers: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    // `email`, or `address` as the suppression list's CSV calls it: one file works for both.
    let email_col = headers
        .iter()
        .position(|h| h == "email")
        .or_else(|| headers.iter().position(|h| h == "address"))
        .ok_or_else(|| ImportError::NoEmailColumn(headers.join(", ")))?;
    let subscribed_col = headers.iter().position(|h| h == "subscribed");
    let mut tx = pg.begin().await.map_err(|source| StoreError::Query {
        doing: "beginning an audience import",
        source,
    })?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let (mut rows, mut written, mut bad) = (0u64, 0u64, 0usize);
    let mut report = String::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record?;
        rows += 1;
        let raw = record.get(email_col).unwrap_or("");
        let address = match Address::parse(raw) {
            Ok(a) => a,
            Err(e) => {
                bad += 1;
                if bad <= MAX_REPORTED {
                    // The reason, not the address: reports end up in logs and terminals.
                    report.push_str(&format!("  line {line}: email: {e}\n"));
                }
                continue;
            }
        };
        let subscribed = match subscribed_col.map(|c| record.get(c).unwrap_or("")) {
            None => true,
            Some(v) => match parse_bool(v) {
                Some(b) => b,
                None => {
                    bad += 1;
                    if bad <= MAX_REPORTED {
                        report.push_str(&format!(
                            "  line {line}: subscribed: expected true/false, yes/no or 1/0\n"
                        ));
                    }
                    continue;
                }
            },
        };
        let vars: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .enumerate()
            .filter(|(c, _)| *c != email_col && Some(*c) != subscribed_col)
            .map(|(c, h)| {
                (
                    h.clone(),
                    serde_json::Value::String(record.get(c).unwrap_or("").to_owned()),
                )
            })
            .collect();
        chunk.push(audiences::NewMember {
            email: address.as_str().to_owned(),
            vars: serde_json::Value::Object(vars),
            subscribed,
        });
        if bad > 0 {
            // The import will fail; keep reading only to report every bad row.
            chunk.clear();
        } else if chunk.len() >= CHUNK {
            // Two rows for one address in one statement would update a row twice.
            dedup_last_wins(&mut chunk);
            written += audiences::upsert_members(&mut tx, audience.id, &chunk).await?;
            chunk.clear();
        }
    }
    if bad > 0 {
        if bad > MAX_REPORTED {
            report.push_str(&format!("  ... and {} more\n", bad - MAX_REPORTED));
        }
        return Err(ImportError::BadRows { count: bad, report });
    }
    dedup_last_wins(&mut chunk);
    written += audiences::upsert_members(&mut tx, audience.id, &chunk).await?;
    tx.commit().await.map_err(|source| StoreError::Query {
        doing: "committing an audience import",
        source,
    })?;
    Ok(Imported { rows, written })
}

fn dedup_last_wins(chunk: &mut Vec<audiences::NewMember>) {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<audiences::NewMember> = chunk
        .drain(..)
        .rev()
        .filter(|m| seen.insert(m.email.clone()))
        .collect();
    out.reverse();
    *chunk = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribed_accepts_the_usual_spellings_only() {
        for (s, want) in [
            ("", Some(true)),
            ("TRUE", Some(true)),
            ("no", Some(false)),
            ("0", Some(false)),
            ("maybe", None),
        ] {
            assert_eq!(parse_bool(s), want, "{s:?}");
        }
    }
}
