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
    #[arg(long = "at", alias = "send-at")]
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
