//! `mailfleet bench --scenario durability`: each enqueue durability measured twice, on one
//! Redis master with a replica started for the run (`replicated` needs one; the other levels
//! run on the same pair, so the three are compared on one footing), each measurement with its
//! own scratch database and prefix:
//! - **enqueue only**: `--emails` through one producer with no worker running: emails/s, and
//!   Redis commands and Postgres transactions per email, which are the level's own cost;
//! - **end to end**: the maximum-rate pipeline (producer, workers, mock provider), as the
//!   throughput scenario runs it.

use super::Scratch;
use super::figures::Figures;
use super::pipeline::{body_of, lane_mix, measure, produce};
use crate::config::{Durability, Global, PipelineArgs, Secret};
use crate::store;
use crate::stream::local_cluster::LocalCluster;
use anyhow::{Context, bail};
use serde::Serialize;
use std::time::{Duration, Instant};

const LEVELS: [Durability; 3] = [
    Durability::Ledger,
    Durability::Replicated,
    Durability::Redis,
];

/// One level's enqueue-only figures.
#[derive(Debug, Clone, Serialize)]
struct Enqueue {
    durability: &'static str,
    emails: u64,
    seconds: f64,
    emails_per_sec: f64,
    redis_cmds_per_email: f64,
    pg_xacts_per_email: f64,
}

#[derive(Debug, Serialize)]
struct Level {
    enqueue: Enqueue,
    pipeline: Figures,
}

pub async fn run(g: Global, a: PipelineArgs) -> anyhow::Result<()> {
    if a.workers == 0 || a.emails == 0 {
        bail!("--workers and --emails must be at least 1");
    }
    let pair = LocalCluster::replicated_pair()
        .await
        .context("starting a Redis master with a replica")?;
    let mut all = Vec::with_capacity(LEVELS.len());
    for level in LEVELS {
        let mut global = g.clone();
        global.redis_url = Secret::new(pair.url.clone());
        global.redis_cluster = false;
        global.durability = level;
        let what = || format!("durability {}", level.as_str());
        let scratch = Scratch::new(&global).await?;
        let enqueue = enqueue_only(&global, &scratch, &a).await;
        scratch.finish(&global, a.keep).await?;
        let enqueue = enqueue.with_context(what)?;
        let scratch = Scratch::new(&global).await?;
        let pipeline = measure(&global, &scratch, &a, None).await;
        scratch.finish(&global, a.keep).await?;
        let pipeline = pipeline.with_context(what)?;
        if !a.json {
            print!("{}", pipeline.table());
        }
        all.push(Level { enqueue, pipeline });
    }
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        println!(
            "{:<11} {:>12} {:>16} {:>16} {:>16}",
            "durability", "enqueued/s", "redis cmds/email", "pg xacts/email", "end to end/s"
        );
        for l in &all {
            println!(
                "{:<11} {:>12.0} {:>16.3} {:>16.4} {:>16.0}",
                l.enqueue.durability,
                l.enqueue.emails_per_sec,
                l.enqueue.redis_cmds_per_email,
                l.enqueue.pg_xacts_per_email,
                l.pipeline.emails_per_sec
            );
        }
    }
    let lost: u64 = all.iter().map(|l| l.pipeline.lost).sum();
    if lost > 0 {
        bail!("{lost} email(s) were not sent");
    }
    Ok(())
}

/// `--emails` through one producer at `g.durability`, no worker running.
async fn enqueue_only(g: &Global, s: &Scratch, a: &PipelineArgs) -> anyhow::Result<Enqueue> {
    let pg = store::connect(&s.url, 2).await?;
    store::migrate(&pg).await?;
    pg.close().await;
    let mut global = g.clone();
    global.prefix = s.prefix.clone();
    global.database_url = Secret::new(s.url.clone());
    let producer = crate::Producer::for_global(&global)?;
    let redis = crate::producer::redis_pool(&global)?;
    let calls = || async {
        let mut c = redis.get().await?;
        anyhow::Ok(crate::stream::command_calls(&mut *c).await?)
    };
    let settle = Duration::from_millis(1500);
    tokio::time::sleep(settle).await;
    let (calls_before, xacts_before) =
        (calls().await?, store::bench::xacts(s.admin(), &s.db).await?);
    let body = body_of(a.payload_bytes);
    let began = Instant::now();
    produce(&producer, 0, a.emails, 0, lane_mix(a.tx_share), &body).await?;
    let seconds = began.elapsed().as_secs_f64().max(0.001);
    let calls_after = calls().await?;
    // Closed connections have flushed their statistics.
    producer.close().await;
    tokio::time::sleep(settle).await;
    let xacts_after = store::bench::xacts(s.admin(), &s.db).await?;
    let redis_cmds: u64 = calls_after
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, v)| v.saturating_sub(calls_before.get(k).copied().unwrap_or(0)))
        .sum();
    let per = |n: f64| n / a.emails as f64;
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    Ok(Enqueue {
        durability: g.durability.as_str(),
        emails: a.emails,
        seconds: round(seconds, 2),
        emails_per_sec: round(a.emails as f64 / seconds, 0),
        redis_cmds_per_email: round(per(redis_cmds as f64), 3),
        pg_xacts_per_email: round(per((xacts_after - xacts_before).max(0) as f64), 4),
    })
}
