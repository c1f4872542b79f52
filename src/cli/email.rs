//! `mailfleet email show|list|cancel|retry`: single jobs as Postgres has them, and what an
//! operator does to them. Nothing here prints an address or a body.

use crate::config::Global;
use crate::domain::Status;
use crate::store::emails::operate::{self, Cancel, Filter, RETRYABLE};
use crate::store::{self, emails};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::fmt::Write;
use uuid::Uuid;

#[derive(Debug, Clone, Subcommand)]
pub enum EmailCmd {
    /// One email: its status, lane, provider and message id, and each attempt with its answer.
    Show {
        /// The email's id (what `send` printed and the API returned), or its idempotency key.
        id: String,
        /// The tenant whose idempotency key it is (keys are per tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Emails by status, the most recently changed first.
    List {
        /// queued, sending, retrying, sent, failed, dead, unknown, cancelled, ... (all when
        /// left out).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Changed at or after: RFC 3339, or an age like 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel emails still waiting: queued (including a future `send_at`) or retrying. One
    /// being sent right now, or already final, is not cancelled (the answer says which).
    Cancel {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Only emails of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Put failed emails back in the queue, with a fresh attempt budget, once their cause is
    /// fixed (a template, a provider account). `unknown` ones too when named by id: whether
    /// they went out is not known, so a retry may send them twice.
    Retry {
        /// Email ids (failed or unknown).
        ids: Vec<String>,
        /// Instead of ids: every `failed` email, narrowed by --tenant and --since.
        #[arg(long, conflicts_with = "ids")]
        all_failed: bool,
        #[arg(long)]
        tenant: Option<String>,
        /// With --all-failed: failed at or after (RFC 3339 or an age).
        #[arg(long, requires = "all_failed")]
        since: Option<String>,
        /// With --all-failed: at most this many.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
        /// Say what would be retried; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_ids(ids: &[String]) -> anyhow::Result<Vec<Uuid>> {
    ids.iter()
        .map(|id| {
            Uuid::parse_str(id.trim())
                .with_context(|| format!("{id:?} is not an email id (a UUID)"))
        })
        .collect()
}

fn parse_status(s: &str) -> anyhow::Result<Status> {
    s.parse().map_err(|_| {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        anyhow::anyhow!("no status {s:?}; the statuses are: {}", all.join(", "))
    })
}

pub async fn run(g: Global, cmd: EmailCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    match cmd {
        EmailCmd::Show { id, tenant, json } => show(&pool, &id, tenant.as_deref(), json).await,
        EmailCmd::List {
            status,
            tenant,
            since,
            limit,
            json,
        } => {
            let f = Filter {
                status: status.as_deref().map(parse_status).transpose()?,
                tenant,
                since: since
                    .as_deref()
                    .map(|s| crate::dlq::parse_time(s, chrono::Utc::now()))
                    .transpose()?,
                limit,
            };
            let rows = operate::list(&pool, &f).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", table(&rows));
            }
            Ok(())
        }
        EmailCmd::Cancel { ids, tenant } => {
            let mut refused = 0;
            for id in parse_ids(&ids)? {
                match operate::cancel(&pool, id, tenant.as_deref()).await? {
                    Cancel::Cancelled => println!("{id} cancelled"),
                    Cancel::NotFound => {
                        refused += 1;
                        println!("{id} not cancelled: no such email{}", of_tenant(&tenant));
                    }
                    Cancel::Too(s) => {
                        refused += 1;
                        println!("{id} not cancelled: it is {s}{}", why_not(s));
                    }
                }
            }
            if refused > 0 {
                bail!("{refused} of {} not cancelled", ids.len());
            }
            Ok(())
        }
        EmailCmd::Retry {
            ids,
            all_failed,
            tenant,
            since,
            limit,
            dry_run,
        } => {
            let ids = if all_failed {
                let f = Filter {
                    status: Some(Status::Failed),
                    tenant: tenant.clone(),
                    since: since
                        .as_deref()
                        .map(|s| crate::dlq::parse_time(s, chrono::Utc::now()))
                        .transpose()?,
                    limit,
                };
                operate::list(&pool, &f)
                    .await?
                    .into_iter()
                    .map(|r| r.id)
                    .collect()
            } else if ids.is_empty() {
                bail!("name the emails to retry, or --all-failed");
            } else {
                parse_ids(&ids)?
            };
            if dry_run {
                let rows = emails::ids_with_status(&pool, &ids, &RETRYABLE).await?;
                println!("would retry {} of {} email(s)", rows.len(), ids.len());
                return Ok(());
            }
            let redis = super::redis_pool(&g)?;
            let mut conn = redis.get().await.context("no Redis connection")?;
            let keys = crate::stream::Keys::new(&g.prefix, g.partitions);
            let done =
                crate::operate::retry(&pool, &mut *conn, &keys, &ids, tenant.as_deref()).await?;
            println!("retried {} of {} email(s)", done.len(), ids.len());
            if done.len() < ids.len() && !all_failed {
                let all: Vec<&str> = RETRYABLE.iter().map(|s| s.as_str()).collect();
                bail!(
                    "{} not retried: only {} emails can be (`email show` says what each is)",
                    ids.len() - done.len(),
                    all.join(" or ")
                );
            }
            Ok(())
        }
    }
}

fn of_tenant(t: &Option<String>) -> String {
    t.as_ref()
        .map(|t| format!(" of tenant {t}"))
        .unwrap_or_default()
}

fn why_not(s: Status) -> &'static str {
    match s {
        Status::Sending => " (a worker is sending it now)",
        Status::Cancelled => " already",
        _ => " (final)",
    }
}

async fn show(
    pool: &sqlx::PgPool,
    id_or_key: &str,
    tenant: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let id = match Uuid::parse_str(id_or_key.trim()) {
        Ok(id) => id,
        Err(_) => {
            let found = emails::ids_by_key(pool, id_or_key, tenant).await?;
            match found.as_slice() {
                [] => bail!(
                    "no email with id or idempotency key {id_or_key:?}{}",
                    of_tenant(&tenant.map(str::to_owned))
                ),
                [(id, _)] => *id,
                many => {
                    let tenants: Vec<String> = many
                        .iter()
                        .map(|(_, t)| t.clone().unwrap_or_else(|| "(none)".into()))
                        .collect();
                    bail!(
                        "the idempotency key {id_or_key:?} is used by {} tenants ({}): name one with --tenant",
                        many.len(),
                        tenants.join(", ")
                    )
                }
            }
        }
    };
    let Some(row) = emails::status(pool, id).await? else {
        bail!(
            "no email {id} in Postgres (a job is recorded once a worker claims it, or when the API or a schedule accepts it)"
        );
    };
    let attempts = emails::attempts(pool, id).await?;
    let events = store::webhooks::events_of(pool, id).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "email": row, "attempts": attempts, "events": events })
        );
    } else {
        print!("{}", text(&row, &attempts, &events));
    }
    Ok(())
}

fn table(rows: &[operate::Listed]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<36} {:<10} {:<4} {:<12} {:>3} {:<25} ERROR",
        "ID", "STATUS", "LANE", "TENANT", "TRY", "UPDATED"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<36} {:<10} {:<4} {:<12} {:>3} {:<25} {}",
            r.id,
            r.status,
            r.lane,
            r.tenant.as_deref().unwrap_or("-"),
            r.attempts,
            r.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.last_error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(o, "{} email(s)", rows.len());
    o
}

fn text(
    e: &emails::EmailStatus,
    attempts: &[emails::AttemptRow],
    events: &[store::webhooks::EventRow],
) -> String {
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
    if !events.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<10} {:<14} {:<25} EVENT ID",
            "PROVIDER", "EVENT", "RECEIVED"
        );
        for e in events {
            let _ = writeln!(
                o,
                "{:<10} {:<14} {:<25} {}",
                e.provider,
                e.kind,
                e.received_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                e.event_id
            );
        }
    }
    o
}
