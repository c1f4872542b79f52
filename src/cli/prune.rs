//! `mailfleet prune --older-than 30d [--dry-run]`: retention for Postgres (what is deleted and
//! why is in `store::retention`). Streams need no command: the scheduler leader trims them.

use crate::config::Global;
use crate::store::{self, retention};
use anyhow::bail;
use clap::Args;

/// Below this, a final job's stream entry could in principle still be pending somewhere, and a
/// late reclaim of it would find no row and send the email again.
const MIN_AGE_SECS: i64 = 86_400;

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete final emails (and their attempts), webhook event ids and finished schedule runs
    /// older than this: an age such as 30d, 720h (at least 1d).
    #[arg(long)]
    pub older_than: String,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Emails deleted per transaction.
    #[arg(long, default_value_t = 5000)]
    pub batch: i64,
}

pub async fn run(g: Global, a: PruneArgs) -> anyhow::Result<()> {
    let Some(secs) = crate::domain::parse_span(&a.older_than) else {
        bail!(
            "--older-than {:?}: use an age such as 30d or 720h",
            a.older_than
        );
    };
    if secs < MIN_AGE_SECS {
        bail!(
            "--older-than must be at least 1d: younger final jobs may still have stream entries a reclaim could resend"
        );
    }
    let cutoff = chrono::Utc::now() - chrono::Duration::seconds(secs);
    let pg = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pg).await?;
    let (verb, n) = if a.dry_run {
        ("would delete", retention::count(&pg, cutoff).await?)
    } else {
        ("deleted", retention::prune(&pg, cutoff, a.batch).await?)
    };
    println!(
        "{verb} emails={} attempts={} webhook_events={} schedule_runs={} idempotency_keys={} (before {})",
        n.emails,
        n.attempts,
        n.webhook_events,
        n.schedule_runs,
        n.idempotency_keys,
        cutoff.to_rfc3339()
    );
    Ok(())
}
