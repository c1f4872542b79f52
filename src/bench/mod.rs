//! `mailfleet bench`: the full pipeline ([`pipeline`], the default) and `bench fanout`, run on
//! this machine and measured from outside. A harness, not part of the product's data path: like
//! `cli/` it prints and returns `anyhow` errors; nothing in the library calls it. `cli/bench.rs`
//! only hands it its settings (`config::BenchArgs`).

mod durability;
mod figures;
mod pipeline;
mod procs;
mod skewed;

use crate::config::{BenchArgs, BenchCmd, Global};
use crate::lease::{self, LeaseKeys};
use crate::scheduler::{self, admin};
use crate::store::{self, audiences, schedules};
use anyhow::{Context, bail};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn run(g: Global, a: BenchArgs) -> anyhow::Result<()> {
    match a.cmd {
        Some(BenchCmd::Fanout {
            schedules,
            batch,
            keep,
            workers,
            kill_leader_after_secs,
            ..
        }) if schedules > 0 => {
            let s = skewed::Skew {
                schedules,
                batch,
                workers,
                kill_after: Duration::from_secs(kill_leader_after_secs),
            };
            skewed::run(g, s, keep).await
        }
        Some(BenchCmd::Fanout {
            members,
            batch,
            keep,
            ..
        }) => fanout(g, members, batch, keep).await,
        None if a.pipeline.scenario == crate::config::Scenario::Durability => {
            durability::run(g, a.pipeline).await
        }
        None => pipeline::run(g, a.pipeline).await,
    }
}

/// A scratch database next to the configured one and a scratch Redis prefix, removed by
/// [`Scratch::finish`] unless kept.
pub(crate) struct Scratch {
    admin: sqlx::PgPool,
    pub db: String,
    pub url: String,
    pub prefix: String,
}

impl Scratch {
    pub async fn new(g: &Global) -> anyhow::Result<Scratch> {
        let base = g.database_url.expose();
        let (head, tail) = base
            .rsplit_once('/')
            .context("the database URL names no database")?;
        let query = tail
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        // The bench needs only the server: when the configured database does not exist (a
        // fresh machine), the server's `postgres` database serves to create the scratch one.
        let admin = match store::connect(base, 2).await {
            Ok(pool) => pool,
            Err(store::StoreError::Connect { source, .. })
                if source.as_database_error().and_then(|d| d.code()).as_deref()
                    == Some("3D000") =>
            {
                store::connect(&format!("{head}/postgres{query}"), 2).await?
            }
            Err(e) => return Err(e.into()),
        };
        let db = format!("mailfleet_bench_{}", std::process::id());
        store::create_database(&admin, &db).await?;
        Ok(Scratch {
            admin,
            url: format!("{head}/{db}{query}"),
            db,
            prefix: format!("bench{}", uuid::Uuid::now_v7().simple()),
        })
    }

    /// The configured database's pool (for statistics about the scratch one).
    pub fn admin(&self) -> &sqlx::PgPool {
        &self.admin
    }

    pub async fn finish(self, g: &Global, keep: bool) -> anyhow::Result<()> {
        if keep {
            eprintln!("kept database {} and Redis prefix {}", self.db, self.prefix);
            return Ok(());
        }
        store::drop_database(&self.admin, &self.db).await?;
        if crate::stream::cluster_nodes(&g.redis_target()).is_some() {
            // A cluster's keys are spread over its nodes (SCAN reaches one); the bench's own
            // cluster goes away whole.
            return Ok(());
        }
        let redis = crate::producer::redis_pool(g)?;
        let mut conn = redis.get().await?;
        crate::stream::delete_prefix(&mut *conn, &self.prefix).await?;
        Ok(())
    }
}

async fn fanout(g: Global, members: i64, batch: usize, keep: bool) -> anyhow::Result<()> {
    let scratch = Scratch::new(&g).await?;
    let result = measure(&g, &scratch.url, &scratch.prefix, members, batch).await;
    scratch.finish(&g, keep).await?;
    result
}

async fn measure(
    g: &Global,
    url: &str,
    prefix: &str,
    members: i64,
    batch: usize,
) -> anyhow::Result<()> {
    let pg = store::connect(url, 8).await?;
    store::migrate(&pg).await?;
    store::templates::put(&pg, "bench", "Hello {{ name }}", None, Some("A benchmark")).await?;
    let audience = audiences::create(&pg, "bench")
        .await?
        .context("a fresh audience")?;
    let filled = Instant::now();
    audiences::fill_synthetic(&pg, audience.id, members).await?;
    eprintln!(
        "audience of {members} members created in {:.1}s",
        filled.elapsed().as_secs_f64()
    );
    // One tick, two seconds from now.
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let cron = scheduler::cron::at_second(at);
    let s = admin::add(
        &pg,
        &admin::Definition {
            name: "bench".into(),
            cron,
            timezone: "UTC".into(),
            template: "bench".into(),
            audience: "bench".into(),
            from: "bench@example.com".into(),
            lane: crate::domain::Lane::Bulk,
            vars: serde_json::json!({}),
            catch_up: "once".into(),
            stale_after: "1h".into(),
            paused: false,
        },
    )
    .await?;
    let mut global = g.clone();
    global.prefix = prefix.to_owned();
    let mut settings = scheduler::Settings::new(format!("bench/{}", std::process::id()));
    settings.fanout_batch = batch.max(1);
    let token = CancellationToken::new();
    let handle = scheduler::start(
        settings,
        scheduler::Deps {
            pg: pg.clone(),
            redis: crate::producer::redis_pool(&global)?,
            producer: crate::Producer::for_global(&global)?,
            lease_keys: LeaseKeys::new(prefix, lease::SCHEDULER),
        },
        token.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let run = loop {
        if let Some(r) = schedules::runs(&pg, s.id, 1).await?.into_iter().next()
            && r.status != "fanning_out"
        {
            break r;
        }
        if Instant::now() > deadline {
            token.cancel();
            bail!("the fan-out did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    token.cancel();
    let _ = handle.await;
    let secs = run
        .finished_at
        .map(|f| (f - run.fired_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(f64::NAN);
    println!(
        "fanout members={} batch={} status={} seconds={secs:.2} members_per_sec={:.0} tick_lag_ms={}",
        run.enqueued,
        batch,
        run.status,
        f64::from(run.enqueued) / secs,
        (run.fired_at - run.tick).num_milliseconds()
    );
    if run.enqueued as i64 != members {
        bail!("enqueued {} of {members}", run.enqueued);
    }
    Ok(())
}
