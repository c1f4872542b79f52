use crate::config::Global;
use crate::store::{self, templates};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Store a new version of a template (minijinja syntax; HTML is auto-escaped).
    Put {
        name: String,
        #[arg(long)]
        subject: String,
        #[arg(long, conflicts_with = "html_file")]
        html: Option<String>,
        #[arg(long)]
        html_file: Option<PathBuf>,
        #[arg(long, conflicts_with = "text_file")]
        text: Option<String>,
        #[arg(long)]
        text_file: Option<PathBuf>,
    },
    /// Print a template (latest version unless --version).
    Get {
        name: String,
        #[arg(long)]
        version: Option<i32>,
    },
    /// List the latest version of every template.
    List {
        /// One JSON object per template per line (name, version, subject, created_at).
        #[arg(long)]
        json: bool,
    },
}

fn body(inline: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s)),
        (None, Some(p)) => Ok(Some(
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )),
        (None, None) => Ok(None),
    }
}

pub async fn run(g: Global, c: TemplateCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pool).await?;
    match c {
        TemplateCmd::Put {
            name,
            subject,
            html,
            html_file,
            text,
            text_file,
        } => {
            let html = body(html, html_file)?;
            let text = body(text, text_file)?;
            if html.is_none() && text.is_none() {
                bail!("give --html/--html-file or --text/--text-file (or both)");
            }
            // Checked and rendered dry before storing, with the workers' default limits: a
            // template outside the bounded subset, or one that does not compile, never
            // reaches a worker.
            crate::render::check_template(
                &subject,
                html.as_deref(),
                text.as_deref(),
                crate::render::Limits::default(),
            )
            .map_err(|e| anyhow::anyhow!("not stored: {e}"))?;
            let t =
                templates::put(&pool, &name, &subject, html.as_deref(), text.as_deref()).await?;
            println!("{} version {}", t.name, t.version);
        }
        TemplateCmd::Get { name, version } => match templates::get(&pool, &name, version).await? {
            Some(t) => println!("{}", serde_json::to_string_pretty(&t)?),
            None => bail!("no template {name:?}"),
        },
        TemplateCmd::List { json: true } => {
            for t in templates::list(&pool).await? {
                let v = serde_json::json!({
                    "name": t.name, "version": t.version, "subject": t.subject,
                    "created_at": t.created_at,
                });
                println!("{v}");
            }
        }
        TemplateCmd::List { json: false } => {
            println!("{:<32} {:>7}  created", "name", "version");
            for t in templates::list(&pool).await? {
                println!(
                    "{:<32} {:>7}  {}",
                    t.name,
                    t.version,
                    t.created_at.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}
