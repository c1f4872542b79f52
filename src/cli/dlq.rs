use crate::config::Global;
use crate::dlq::{self, DeadEntry, Filter};
use crate::store;
use anyhow::bail;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters (one line each; --json for JSON lines).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print every field of one dead letter, found by its dead-stream id or its job id.
    Show { id: String },
    /// Put matching dead letters back on their lanes (same job id), at a capped rate.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Entries per second at most.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// A job already replayed this often stays dead.
        #[arg(long, default_value_t = 3)]
        max_replays: u32,
    },
    /// Delete matching dead letters for good. Needs a filter or --all.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge every dead letter.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this reason (too_large, bad_json, max_attempts, max_deliveries, ...; an unknown
    /// one is refused with the list).
    #[arg(long)]
    reason: Option<String>,
    /// Only this error class (malformed, no_outcome, transient, quota_auth).
    #[arg(long)]
    class: Option<String>,
    /// Dead-lettered at or after: RFC 3339, or an age like 15m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered at or before: RFC 3339, or an age.
    #[arg(long)]
    until: Option<String>,
    /// Only the entries of this job id.
    #[arg(long)]
    job: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<usize>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.reason.is_none()
            && self.class.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.job.is_none()
    }
    fn to_filter(&self) -> anyhow::Result<Filter> {
        if let Some(r) = &self.reason
            && !crate::stream::consumer::dead_reason::all().any(|k| k == r)
        {
            let known: Vec<&str> = crate::stream::consumer::dead_reason::all().collect();
            bail!(
                "no dead-letter reason {r:?}; the reasons are: {}",
                known.join(", ")
            );
        }
        let now = chrono::Utc::now();
        Ok(Filter {
            reason: self.reason.clone(),
            class: self.class.clone(),
            since: self
                .since
                .as_deref()
                .map(|s| dlq::parse_time(s, now))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| dlq::parse_time(s, now))
                .transpose()?,
            job_id: self.job.clone(),
            dead_id: None,
            limit: self.limit,
        })
    }
}

fn line(e: &DeadEntry) -> String {
    let mut error: String = e.error.chars().take(80).collect();
    error = error.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        e.partition,
        e.dead_id,
        e.dead_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        e.reason,
        if e.class.is_empty() { "-" } else { &e.class },
        e.attempts,
        e.lane,
        e.job_id.as_deref().unwrap_or("-"),
        e.replays,
        error
    )
}

const HEADER: &str =
    "partition\tdead_id\tdead_at\treason\tclass\tattempts\tlane\tjob_id\treplays\terror";

pub async fn run(g: Global, cmd: DlqCmd) -> anyhow::Result<()> {
    let pool = super::redis_pool(&g)?;
    let keys = crate::stream::Keys::new(&g.prefix, g.partitions);
    let mut conn = pool.get().await?;
    match cmd {
        DlqCmd::List { filter, json } => {
            let entries = dlq::scan(&mut *conn, &keys, &filter.to_filter()?).await?;
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                println!("{HEADER}");
                for e in &entries {
                    println!("{}", line(e));
                }
                eprintln!("{} dead letter(s)", entries.len());
            }
        }
        DlqCmd::Show { id } => {
            let by_dead = Filter {
                dead_id: Some(id.clone()),
                ..Default::default()
            };
            let mut found = dlq::scan(&mut *conn, &keys, &by_dead).await?;
            if found.is_empty() {
                let by_job = Filter {
                    job_id: Some(id.clone()),
                    ..Default::default()
                };
                found = dlq::scan(&mut *conn, &keys, &by_job).await?;
            }
            if found.is_empty() {
                bail!("no dead letter has the id {id:?} (as a dead-stream id or a job id)");
            }
            for e in found {
                println!("partition\t{}\ndead_id\t{}", e.partition, e.dead_id);
                for (k, v) in &e.fields {
                    println!("{k}\t{v}");
                }
                println!();
            }
        }
        DlqCmd::Replay {
            filter,
            dry_run,
            rate,
            max_replays,
        } => {
            let entries = dlq::scan(&mut *conn, &keys, &filter.to_filter()?).await?;
            if dry_run {
                println!("{HEADER}");
                for e in &entries {
                    println!("{}", line(e));
                }
                println!(
                    "dry run: {} dead letter(s) match; nothing replayed",
                    entries.len()
                );
                return Ok(());
            }
            let pg = store::connect(g.database_url.expose(), 2).await?;
            store::ensure_migrated(&pg).await?;
            let r = dlq::replay(&mut *conn, &pg, &keys, &entries, max_replays, rate).await?;
            println!(
                "replayed={} refused={} already_final={} missing={}",
                r.replayed, r.refused, r.already_final, r.missing
            );
        }
        DlqCmd::Purge {
            filter,
            all,
            dry_run,
        } => {
            if filter.is_empty() && !all {
                bail!("purge needs a filter (--reason, --class, --since, --until, --job) or --all");
            }
            let entries = dlq::scan(&mut *conn, &keys, &filter.to_filter()?).await?;
            if dry_run {
                println!(
                    "dry run: {} dead letter(s) match; nothing purged",
                    entries.len()
                );
                return Ok(());
            }
            let n = dlq::purge(&mut *conn, &keys, &entries).await?;
            println!("purged={n}");
        }
    }
    Ok(())
}
