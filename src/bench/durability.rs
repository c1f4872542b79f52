//! `mailfleet bench --scenario durability`: the maximum-rate pipeline once per enqueue
//! durability, on one Redis master with a replica started for the run (`replicated` needs
//! one; the other levels run on the same pair, so the three are compared on one footing), each
//! level with its own scratch database and prefix. Prints each level's figures, then one line
//! per level: end-to-end and enqueue rates, Redis commands and Postgres transactions per email.

use super::Scratch;
use super::figures::Figures;
use super::pipeline::measure;
use crate::config::{Durability, Global, PipelineArgs, Secret};
use crate::stream::local_cluster::LocalCluster;
use anyhow::{Context, bail};

const LEVELS: [Durability; 3] = [
    Durability::Ledger,
    Durability::Replicated,
    Durability::Redis,
];

pub async fn run(g: Global, a: PipelineArgs) -> anyhow::Result<()> {
    let pair = LocalCluster::replicated_pair()
        .await
        .context("starting a Redis master with a replica")?;
    let mut all: Vec<Figures> = Vec::with_capacity(LEVELS.len());
    for level in LEVELS {
        let mut global = g.clone();
        global.redis_url = Secret::new(pair.url.clone());
        global.redis_cluster = false;
        global.durability = level;
        let scratch = Scratch::new(&global).await?;
        let result = measure(&global, &scratch, &a, None).await;
        scratch.finish(&global, a.keep).await?;
        let f = result.with_context(|| format!("durability {}", level.as_str()))?;
        if !a.json {
            print!("{}", f.table());
        }
        all.push(f);
    }
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        println!(
            "{:<11} {:>12} {:>12} {:>16} {:>16}",
            "durability", "emails/s", "enqueued/s", "redis cmds/email", "pg xacts/email"
        );
        for f in &all {
            println!(
                "{:<11} {:>12.0} {:>12.0} {:>16.3} {:>16.4}",
                f.durability,
                f.emails_per_sec,
                f.enqueue_per_sec.unwrap_or(0.0),
                f.redis_cmds_per_email,
                f.pg_xacts_per_email
            );
        }
    }
    let lost: u64 = all.iter().map(|f| f.lost).sum();
    if lost > 0 {
        bail!("{lost} email(s) were not sent");
    }
    Ok(())
}
