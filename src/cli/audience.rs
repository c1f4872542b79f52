use crate::config::Global;
use crate::scheduler::audience;
use crate::store::{self, audiences};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum AudienceCmd {
    /// Create an empty audience.
    Create { name: String },
    /// Import members from CSV (header row: `email`, optional `subscribed`, any other column
    /// becomes a template variable). All or nothing: one bad row imports none. `-` reads stdin.
    Import { name: String, file: PathBuf },
    /// List audiences with their member counts.
    List {
        /// One JSON object per audience per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete an audience and its members (refused while a schedule uses it).
    Rm { name: String },
}

pub async fn run(g: Global, c: AudienceCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pool).await?;
    match c {
        AudienceCmd::Create { name } => {
            if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                bail!("an audience name is 1 to 200 printable characters");
            }
            match audiences::create(&pool, &name).await? {
                Some(a) => println!("{} created", a.name),
                None => bail!("an audience named {name:?} exists already"),
            }
        }
        AudienceCmd::Import { name, file } => {
            let started = std::time::Instant::now();
            let imported = if file.as_os_str() == "-" {
                // The CSV parser reads synchronously; stdin is drained into memory first.
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                audience::import(&pool, &name, buf.as_slice()).await?
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?;
                audience::import(&pool, &name, std::io::BufReader::new(f)).await?
            };
            println!(
                "{name}: {} rows read, {} members written in {:.1}s",
                imported.rows,
                imported.written,
                started.elapsed().as_secs_f64()
            );
        }
        AudienceCmd::List { json: true } => {
            for a in audiences::list(&pool).await? {
                println!("{}", serde_json::to_string(&a)?);
            }
        }
        AudienceCmd::List { json: false } => {
            println!(
                "{:<32} {:>10} {:>11}  created",
                "name", "members", "subscribed"
            );
            for a in audiences::list(&pool).await? {
                println!(
                    "{:<32} {:>10} {:>11}  {}",
                    a.name,
                    a.members,
                    a.subscribed,
                    a.created_at.to_rfc3339()
                );
            }
        }
        AudienceCmd::Rm { name } => match audiences::remove(&pool, &name).await? {
            audiences::Removed::Removed => println!("{name} removed"),
            audiences::Removed::Missing => bail!("no audience named {name:?}"),
            audiences::Removed::InUse(s) => bail!(
                "audience {name:?} is used by schedule(s) {}; remove those first",
                s.join(", ")
            ),
        },
    }
    Ok(())
}
