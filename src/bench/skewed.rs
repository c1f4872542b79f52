//! `mailfleet bench fanout --schedules N`: N schedules of one member each, all due at the same
//! instant (every tenant's digest at 09:00). Prints how late the last tick fired, how long
//! until every fan-out was done, and how many ticks were skipped or stale (the target is none:
//! a busy leader never drops a tick it was on time for).
//!
//! By default one scheduler runs in the bench's own process. With `--workers`, the scheduler
//! runs in that many `mailfleet worker` processes, which also send the emails to a mock
//! provider; `--kill-leader-after-secs` SIGKILLs the leader mid-pass and starts a replacement.

use super::Scratch;
use super::procs::{Proc, ready, start_mock, start_worker};
use crate::config::Global;
use crate::lease::{self, LeaseKeys};
use crate::scheduler;
use crate::store;
use anyhow::{Context, bail};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to run.
pub(super) struct Skew {
    pub schedules: i64,
    pub batch: usize,
    pub workers: usize,
    pub kill_after: Duration,
}

pub(super) async fn run(g: Global, s: Skew, keep: bool) -> anyhow::Result<()> {
    let scratch = Scratch::new(&g).await?;
    let result = measure(&g, &scratch, &s).await;
    scratch.finish(&g, keep).await?;
    result
}

async fn measure(g: &Global, scratch: &Scratch, s: &Skew) -> anyhow::Result<()> {
    let n = s.schedules;
    let pg = store::connect(&scratch.url, 8).await?;
    store::migrate(&pg).await?;
    store::templates::put(&pg, "bench", "Hello {{ name }}", None, Some("A benchmark")).await?;
    // The scheduler: in this process, or in worker processes (with the mock they send to).
    let token = CancellationToken::new();
    let mut in_process = None;
    let mut mock = None;
    let mut workers: Vec<(String, Proc)> = Vec::new();
    if s.workers == 0 {
        let mut global = g.clone();
        global.prefix = scratch.prefix.clone();
        let mut settings = scheduler::Settings::new(format!("bench/{}", std::process::id()));
        settings.fanout_batch = s.batch.max(1);
        in_process = Some(scheduler::start(
            settings,
            scheduler::Deps {
                pg: pg.clone(),
                redis: crate::producer::redis_pool(&global)?,
                producer: crate::Producer::for_global(&global)?,
                lease_keys: LeaseKeys::new(&scratch.prefix, lease::SCHEDULER),
            },
            token.clone(),
        ));
    } else {
        let (m, url) = start_mock(5, 0, 0).await?;
        mock = Some((m, url.clone()));
        let http = reqwest::Client::new();
        for i in 0..s.workers {
            let name = format!("w{i}");
            let w = start_worker(g, scratch, &name, &url, None, None, None).await?;
            ready(&http, &w.metrics, Duration::from_secs(60)).await?;
            workers.push((name, w));
        }
    }
    let made = Instant::now();
    // Far enough ahead for the rows to be in place before it comes.
    let at = chrono::Utc::now() + chrono::Duration::seconds(3 + n / 20_000);
    let cron = scheduler::cron::at_second(at);
    let at =
        chrono::DateTime::<chrono::Utc>::from_timestamp(at.timestamp(), 0).context("a time")?;
    store::bench::skewed_schedules(&pg, n, &cron, at, "bench").await?;
    eprintln!(
        "{n} schedules of one member each, due at {at}, created in {:.1}s",
        made.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut killed = s.kill_after.is_zero() || workers.is_empty();
    loop {
        if !killed && chrono::Utc::now() >= at + chrono::Duration::from_std(s.kill_after)? {
            killed = true;
            kill_leader(
                g,
                scratch,
                &pg,
                &mut workers,
                mock.as_ref().map(|m| m.1.as_str()),
            )
            .await?;
        }
        let left = store::bench::schedule_work_left(&pg, at).await?;
        if left == 0 && killed {
            break;
        }
        if Instant::now() > deadline {
            token.cancel();
            bail!("{left} ticks not fired or fanned out within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fanned_out = Instant::now();
    let sent = if workers.is_empty() {
        None
    } else {
        // Every email sent: the workers drain what the fan-outs queued.
        loop {
            let (_, sent) = store::bench::progress(&pg).await?;
            if sent >= n || Instant::now() > deadline {
                break Some((sent, fanned_out.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    token.cancel();
    if let Some(h) = in_process {
        let _ = h.await;
    }
    let duplicates = match &mock {
        Some((_, url)) => {
            let stats: crate::mock::Stats = reqwest::get(format!("{url}/stats"))
                .await?
                .json()
                .await
                .context("the mock's /stats")?;
            Some(stats.duplicates)
        }
        None => None,
    };
    for (_, w) in &mut workers {
        let _ = w.child.kill().await;
    }
    if let Some((mut m, _)) = mock {
        let _ = m.kill().await;
    }
    report(&pg, s, at, sent, duplicates).await
}

/// SIGKILL the process whose token is in the fence, and start a replacement of the same name.
async fn kill_leader(
    g: &Global,
    scratch: &Scratch,
    pg: &PgPool,
    workers: &mut [(String, Proc)],
    mock: Option<&str>,
) -> anyhow::Result<()> {
    let holder = store::fence::holder(pg, lease::SCHEDULER)
        .await?
        .and_then(|(_, h)| h)
        .context("no leader has written the fence")?;
    let name = holder.split('/').next().unwrap_or_default().to_owned();
    let Some((_, w)) = workers.iter_mut().find(|(n, _)| *n == name) else {
        bail!("the leader {name} is not one of the bench's workers");
    };
    if let Some(pid) = w.child.id() {
        // SAFETY: kill(2) with a pid this bench spawned and still owns.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = w.child.wait().await;
    eprintln!("killed the leader {name}; starting a replacement");
    *w = start_worker(
        g,
        scratch,
        &name,
        mock.unwrap_or_default(),
        None,
        None,
        None,
    )
    .await?;
    Ok(())
}

async fn report(
    pg: &PgPool,
    s: &Skew,
    at: chrono::DateTime<chrono::Utc>,
    sent: Option<(i64, Duration)>,
    duplicates: Option<u64>,
) -> anyhow::Result<()> {
    let n = s.schedules;
    let store::bench::TickOutcome {
        runs,
        done,
        skipped,
        stale,
        last_fired_ms,
        last_done_ms,
        emails,
    } = store::bench::tick_outcome(pg, at).await?;
    let mut line = format!(
        "fanout schedules={n} batch={} workers={} killed_leader={} runs={runs} done={done} \
         skipped={skipped} stale={stale} emails={emails} last_tick_lag_ms={last_fired_ms:.0} \
         last_done_ms={last_done_ms:.0}",
        s.batch,
        s.workers,
        !s.kill_after.is_zero() && s.workers > 0,
    );
    if let Some((sent, took)) = sent {
        line.push_str(&format!(
            " sent={sent} sent_within_ms_of_fan_out={}",
            took.as_millis()
        ));
    }
    if let Some(d) = duplicates {
        line.push_str(&format!(" duplicates={d}"));
    }
    println!("{line}");
    if runs != n || done != n || emails != n {
        bail!("expected {n} runs done and {n} emails: runs {runs}, done {done}, emails {emails}");
    }
    if let Some((sent, _)) = sent
        && sent != n
    {
        bail!("{sent} of {n} emails sent");
    }
    Ok(())
}
