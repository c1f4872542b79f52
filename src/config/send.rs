//! `mailfleet send`'s settings: one email from flags, or many from a JSONL file.

use crate::domain::Lane;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Recipient (repeatable).
    #[arg(long)]
    pub to: Vec<String>,
    #[arg(long)]
    pub cc: Vec<String>,
    #[arg(long)]
    pub bcc: Vec<String>,
    /// Sender, `Name <addr>` or `addr`.
    #[arg(long, env = "MAILFLEET_DEFAULT_FROM")]
    pub from: Option<String>,
    #[arg(long)]
    pub reply_to: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    /// Named template (see `mailfleet template put`).
    #[arg(long)]
    pub template: Option<String>,
    /// Template variables as a JSON object.
    #[arg(long)]
    pub vars: Option<String>,
    #[arg(long)]
    pub html: Option<String>,
    #[arg(long)]
    pub text: Option<String>,
    /// `tx` (default) or `bulk`.
    #[arg(long, default_value = "tx")]
    pub lane: Lane,
    /// Send later, at this RFC 3339 time.
    #[arg(long = "at", alias = "send-at", value_parser = parse_time)]
    pub send_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Idempotency key: the same key within the dedup TTL enqueues once.
    #[arg(long)]
    pub idem: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// Enqueue every line of a JSONL file (`-` for stdin): each line is a payload object with
    /// optional `lane` and `idempotency_key` beside its fields. Prints one id per line.
    #[arg(long, conflicts_with_all = ["to", "subject", "template", "html", "text"])]
    pub file: Option<PathBuf>,
}

/// An RFC 3339 time; a time without a zone is refused with the forms that work, since which
/// zone was meant cannot be guessed.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .any(|f| chrono::NaiveDateTime::parse_from_str(s, f).is_ok());
    if naive {
        Err(format!(
            "{s:?} has no time zone; add one: {s}Z for UTC, or an offset such as {s}+02:00"
        ))
    } else {
        Err(format!(
            "{s:?} is not an RFC 3339 time; write it like 2030-01-01T09:00:00Z or 2030-01-01T09:00:00+02:00"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_needs_its_zone() {
        assert!(super::parse_time("2030-01-01T09:00:00Z").is_ok());
        assert_eq!(
            super::parse_time("2030-01-01T09:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2030-01-01T07:00:00+00:00"
        );
        let e = super::parse_time("2030-01-01T09:00:00").unwrap_err();
        assert!(
            e.contains("no time zone") && e.contains("2030-01-01T09:00:00Z"),
            "{e}"
        );
        let e = super::parse_time("tomorrow").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
