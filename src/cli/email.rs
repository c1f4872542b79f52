//! `mailfleet email show <id> [--json]`: one email as Postgres has it, with every attempt and
//! what the provider answered. Nothing here prints an address or a body.

use crate::config::Global;
use crate::store::{self, emails};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::fmt::Write;

#[derive(Debug, Clone, Subcommand)]
pub enum EmailCmd {
    /// One email: its status, lane, provider and message id, and each attempt with its answer.
    Show {
        /// The email's id (what `send` printed and the API returned).
        id: String,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: Global, cmd: EmailCmd) -> anyhow::Result<()> {
    match cmd {
        EmailCmd::Show { id, json } => {
            let id = uuid::Uuid::parse_str(id.trim())
                .with_context(|| format!("{id:?} is not an email id (a UUID)"))?;
            let pool = store::connect(g.database_url.expose(), 2).await?;
            let Some(row) = emails::status(&pool, id).await? else {
                bail!(
                    "no email {id} in Postgres (a job is recorded once a worker claims it, or when the API or a schedule accepts it)"
                );
            };
            let attempts = emails::attempts(&pool, id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "email": row, "attempts": attempts })
                );
            } else {
                print!("{}", text(&row, &attempts));
            }
            Ok(())
        }
    }
}

fn text(e: &emails::EmailStatus, attempts: &[emails::AttemptRow]) -> String {
    let mut o = String::new();
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let _ = writeln!(o, "id          {}", e.id);
    let _ = writeln!(o, "status      {}", e.status);
    let _ = writeln!(o, "lane        {}", e.lane);
    let _ = writeln!(o, "attempts    {}", e.attempts);
    let _ = writeln!(o, "provider    {}", or_dash(e.provider.as_deref()));
    let _ = writeln!(
        o,
        "message id  {}",
        or_dash(e.provider_message_id.as_deref())
    );
    let _ = writeln!(o, "enqueued    {}", e.enqueued_at.to_rfc3339());
    let _ = writeln!(
        o,
        "sent        {}",
        e.sent_at.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
    );
    let _ = writeln!(o, "updated     {}", e.updated_at.to_rfc3339());
    if let Some(err) = &e.last_error {
        let _ = writeln!(o, "last error  {err}");
    }
    let _ = writeln!(
        o,
        "\n{:<8} {:<12} {:<12} {:>6} {:>9}  ERROR",
        "ATTEMPT", "PROVIDER", "OUTCOME", "HTTP", "MS"
    );
    for a in attempts {
        let ms = (a.finished_at - a.started_at).num_milliseconds();
        let _ = writeln!(
            o,
            "{:<8} {:<12} {:<12} {:>6} {:>9}  {}",
            a.attempt,
            a.provider.as_deref().unwrap_or("-"),
            a.outcome,
            a.http_status
                .map_or_else(|| "-".to_owned(), |h| h.to_string()),
            ms,
            a.error.as_deref().unwrap_or("")
        );
    }
    o
}
