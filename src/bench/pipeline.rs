//! `mailfleet bench`: the whole pipeline on this machine, measured from outside the workers.
//!
//! A scratch database and Redis prefix; the mock provider and `--workers` worker processes
//! started from this binary; a producer in this process XADDs the emails (open loop at
//! `--rate`, or all of them at once for the maximum rate). Figures come from evidence the
//! workers do not report themselves:
//! - throughput and enqueue → recorded latency from the `emails` rows (`enqueued_at` is the
//!   producer's clock, `recorded_at` the recording transaction's);
//! - Redis commands per email from `INFO commandstats` deltas (commands inside scripts
//!   included; the server's whole count, so run it on a quiet Redis);
//! - Postgres transactions per email from `pg_stat_database` of the scratch database (read
//!   after the workers exit, when every backend has reported; this process's own polling
//!   subtracted);
//! - worker CPU seconds and peak RSS from `/proc/<pid>` just before the workers stop;
//! - lost (enqueued, not `sent`) and duplicates (the mock's count of a job id seen twice).

use super::Scratch;
use super::figures::{CpuBreakdown, FairFigures, Figures};
use super::procs::*;
use crate::config::{Global, PipelineArgs, Scenario, Secret};
use crate::domain::{Lane, Payload};
use crate::producer::NewJob;
use crate::store::{self, bench::Latency};
use crate::stream::local_cluster::LocalCluster;
use anyhow::{Context, bail};
use std::time::{Duration, Instant};

fn email(i: u64, lane: Lane, body: &str) -> NewJob {
    tenant_email(i, lane, None, body)
}

fn tenant_email(i: u64, lane: Lane, tenant: Option<&str>, body: &str) -> NewJob {
    NewJob {
        lane,
        idempotency_key: None,
        payload: Payload {
            to: vec![format!("user{i}@example.com")],
            from: "Bench <bench@example.com>".into(),
            subject: Some(format!("Bench {i}")),
            text: Some(body.to_owned()),
            tenant: tenant.map(str::to_owned),
            ..Payload::default()
        },
    }
}

/// Enqueue `n` emails of `lane` (or the mix) starting at number `first`: all at once in
/// chunks when `rate` is 0, else paced every 10 ms.
/// The lane of email `i` when a `tx_share` of them are tx (every `1 / tx_share`-th).
pub(super) fn lane_mix(tx_share: f64) -> impl Fn(u64) -> Lane + Send + 'static {
    let tx_every = if tx_share > 0.0 {
        (1.0 / tx_share.clamp(0.0, 1.0)).round().max(1.0) as u64
    } else {
        u64::MAX
    };
    move |i| {
        if i % tx_every == 0 {
            Lane::Tx
        } else {
            Lane::Bulk
        }
    }
}

/// An email body of `bytes` bytes.
pub(super) fn body_of(bytes: usize) -> String {
    "Lorem ipsum dolor sit amet. "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

pub(super) async fn produce(
    producer: &crate::Producer,
    first: u64,
    n: u64,
    rate: u64,
    lane_of: impl Fn(u64) -> Lane,
    body: &str,
) -> anyhow::Result<u64> {
    produce_with(producer, first, n, rate, |i| email(i, lane_of(i), body)).await
}

/// Enqueue `n` bulk emails of `tenant`, numbered from `first`, all at once in chunks.
async fn produce_tenant(
    producer: &crate::Producer,
    first: u64,
    n: u64,
    tenant: &str,
    body: &str,
) -> anyhow::Result<u64> {
    produce_with(producer, first, n, 0, |i| {
        tenant_email(i, Lane::Bulk, Some(tenant), body)
    })
    .await
}

async fn produce_with(
    producer: &crate::Producer,
    first: u64,
    n: u64,
    rate: u64,
    make: impl Fn(u64) -> NewJob,
) -> anyhow::Result<u64> {
    const CHUNK: u64 = 1000;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let take = if rate == 0 {
            CHUNK.min(n - sent)
        } else {
            // Due by now at `rate`, at most a chunk.
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(n);
            if due <= sent {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            (due - sent).min(CHUNK)
        };
        let jobs: Vec<NewJob> = (first + sent..first + sent + take).map(&make).collect();
        producer.send_many(jobs).await?;
        sent += take;
    }
    Ok(sent)
}

pub async fn run(g: Global, a: PipelineArgs) -> anyhow::Result<()> {
    if a.workers == 0 || a.emails == 0 {
        bail!("--workers and --emails must be at least 1");
    }
    if matches!(a.scenario, Scenario::Fairness | Scenario::Tenants) && a.tenants == 0 {
        bail!(
            "--tenants must be at least 1 in the {:?} scenario",
            a.scenario
        );
    }
    if a.cluster {
        return run_cluster(g, a).await;
    }
    let scratch = Scratch::new(&g).await?;
    let result = measure(&g, &scratch, &a, None).await;
    scratch.finish(&g, a.keep).await?;
    let f = result?;
    if a.json {
        println!("{}", serde_json::to_string(&f)?);
    } else {
        print!("{}", f.table());
    }
    if f.lost > 0 {
        bail!("{} email(s) were not sent", f.lost);
    }
    Ok(())
}

/// `--cluster`: one local Redis Cluster, measured with each worker count in turn (a fresh
/// scratch database and prefix each time).
async fn run_cluster(g: Global, a: PipelineArgs) -> anyhow::Result<()> {
    if a.cluster_workers.is_empty() || a.cluster_workers.contains(&0) {
        bail!("--cluster-workers needs worker counts of at least 1");
    }
    let cluster = LocalCluster::start()
        .await
        .context("starting a local Redis Cluster")?;
    let mut global = g.clone();
    global.redis_url = Secret::new(cluster.url.clone());
    if global.partitions <= 1 {
        global.partitions = 12;
    }
    let mut all = Vec::new();
    for &n in &a.cluster_workers {
        let args = PipelineArgs {
            workers: n,
            ..a.clone()
        };
        let scratch = Scratch::new(&global).await?;
        let result = measure(&global, &scratch, &args, Some(&cluster)).await;
        scratch.finish(&global, a.keep).await?;
        let f = result?;
        if !a.json {
            print!("{}", f.table());
        }
        all.push(f);
    }
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        let rates: Vec<String> = all
            .iter()
            .map(|f| format!("{} worker(s) {:.0}/s", f.workers, f.emails_per_sec))
            .collect();
        println!("cluster scaling: {}", rates.join(", "));
    }
    let lost: u64 = all.iter().map(|f| f.lost).sum();
    if lost > 0 {
        bail!("{lost} email(s) were not sent");
    }
    Ok(())
}

pub(super) async fn measure(
    g: &Global,
    s: &Scratch,
    a: &PipelineArgs,
    cluster: Option<&LocalCluster>,
) -> anyhow::Result<Figures> {
    let pg = store::connect(&s.url, 2).await?;
    store::migrate(&pg).await?;
    let mut global = g.clone();
    global.prefix = s.prefix.clone();
    // The ledger's rows go to the scratch database, like the workers'.
    global.database_url = Secret::new(s.url.clone());
    let producer = crate::Producer::for_global(&global)?;
    let redis = crate::producer::redis_pool(&global)?;
    let http = reqwest::Client::new();

    let (mut mock, mock_url) =
        start_mock(a.mock_latency_ms, a.mock_latency_p99_ms, a.limit).await?;
    // With a limit, the workers limit the provider cluster-wide (lua/ratelimit.lua).
    let config = (a.limit > 0)
        .then(|| -> anyhow::Result<std::path::PathBuf> {
            let path = std::env::temp_dir().join(format!("{}-providers.toml", s.prefix));
            std::fs::write(
                &path,
                format!(
                    "[[providers]]\nname = \"sendgrid\"\nkind = \"sendgrid\"\nbase_url = \"{mock_url}\"\napi_key = \"bench-key\"\nlimit = {}\nwindow_ms = 1000\n",
                    a.limit
                ),
            )
            .context("writing the workers' provider file")?;
            Ok(path)
        })
        .transpose()?;
    let weights = (a.scenario == Scenario::Weights).then(|| format!("gold={}", a.gold_weight));
    let start = |i: usize, name: String| {
        let config = config.clone();
        let mock_url = mock_url.clone();
        let weights = weights.clone();
        async move {
            start_worker(
                g,
                s,
                &name,
                &mock_url,
                a.tasks,
                config.as_deref(),
                weights.as_deref(),
            )
            .await
            .with_context(|| format!("starting worker {i}"))
        }
    };
    let body = body_of(a.payload_bytes);
    // The priority scenario's backlog is in the stream before any worker reads: tx then
    // arrives for as long as it drains (produced with the workers running, most of it was
    // sent while it was being enqueued, and tx arrived only for the last fraction of a second).
    if a.scenario == Scenario::Priority {
        produce(&producer, 0, a.emails, 0, |_| Lane::Bulk, &body).await?;
    }
    let mut workers = Vec::with_capacity(a.workers);
    for i in 0..a.workers {
        workers.push(start(i, format!("bench-{i}")).await?);
    }
    for w in &workers {
        ready(&http, &w.metrics, Duration::from_secs(30)).await?;
    }

    let (calls_before, redis_pids) = match cluster {
        Some(c) => (c.command_calls().await?, c.pids()),
        None => {
            let mut c = redis.get().await?;
            (
                crate::stream::command_calls(&mut *c).await?,
                crate::stream::server_pid(&mut *c)
                    .await?
                    .into_iter()
                    .collect(),
            )
        }
    };
    let cpu_before = sample(&workers, &redis_pids, mock.id());
    let xacts_before = store::bench::xacts(s.admin(), &s.db).await?;
    // Transactions of this process in the scratch database, subtracted from the count.
    let mut polls = 0i64;

    let mut producing: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    // The maximum-rate producer's own time, for its enqueue rate.
    let mut enqueue_timer: Option<tokio::task::JoinHandle<anyhow::Result<Duration>>> = None;
    let mut enqueue_took: Option<Duration> = None;
    let total = match a.scenario {
        Scenario::Throughput | Scenario::Durability => {
            let lane_of = lane_mix(a.tx_share);
            let p = producer.clone();
            let (n, rate, body) = (a.emails, a.rate, body.clone());
            enqueue_timer = Some(tokio::spawn(async move {
                let began = Instant::now();
                produce(&p, 0, n, rate, lane_of, &body).await?;
                Ok(began.elapsed())
            }));
            a.emails
        }
        // Enqueued before the workers started, above.
        Scenario::Priority => a.emails,
        Scenario::Fairness => {
            produce_tenant(&producer, 0, a.emails, "big", &body).await?;
            let p = producer.clone();
            let (after, tenants, each, body) = (
                Duration::from_secs(a.tenants_after_secs),
                a.tenants,
                a.tenant_emails,
                body.clone(),
            );
            let first = a.emails;
            producing = Some(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                for t in 0..tenants {
                    produce_tenant(&p, first + t * each, each, &format!("t{t:05}"), &body).await?;
                }
                Ok(())
            }));
            a.emails + a.tenants * a.tenant_emails
        }
        Scenario::Weights => {
            let half = a.emails / 2;
            let p = producer.clone();
            let body = body.clone();
            producing = Some(tokio::spawn(async move {
                // Interleaved in chunks, so neither starts with a head start.
                for c in (0..half).step_by(1000) {
                    let n = 1000.min(half - c);
                    produce_tenant(&p, c, n, "gold", &body).await?;
                    produce_tenant(&p, half + c, n, "free", &body).await?;
                }
                Ok(())
            }));
            half * 2
        }
        Scenario::Tenants => {
            for t in 0..a.tenants {
                produce_tenant(
                    &producer,
                    t * a.tenant_emails,
                    a.tenant_emails,
                    &format!("t{t:05}"),
                    &body,
                )
                .await?;
            }
            let first = a.tenants * a.tenant_emails;
            produce_tenant(&producer, first, a.emails, "big", &body).await?;
            first + a.emails
        }
    };
    let tenant_run = matches!(
        a.scenario,
        Scenario::Fairness | Scenario::Weights | Scenario::Tenants
    );

    // Wait until every enqueued email is acked (acks follow the Postgres commit), watching the
    // streams (one pipelined read, no Postgres load); in the priority scenario, feed tx at
    // `--tx-rate` until the bulk backlog has drained.
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let mut tx_sent = 0u64;
    let mut tx_open = a.scenario == Scenario::Priority;
    let tx_start = Instant::now();
    let mut next_poll = Instant::now();
    let mut killed = false;
    loop {
        if a.kill_after_secs > 0 && !killed && tx_start.elapsed().as_secs() >= a.kill_after_secs {
            killed = true;
            if let Some(pid) = workers[0].child.id() {
                // SAFETY: kill(2) with a pid we spawned and still own.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = workers[0].child.wait().await;
            workers[0] = start(0, "bench-0-replacement".into()).await?;
        }
        if tenant_run && Instant::now() >= next_poll {
            // Done once every email is enqueued and every one is final in Postgres (the
            // streams are not polled: with 10,000 tenants that would be most of the Redis
            // commands measured).
            next_poll = Instant::now() + Duration::from_millis(500);
            let enqueued = producing.as_ref().is_none_or(|h| h.is_finished());
            if enqueued {
                if let Some(h) = producing.take() {
                    h.await.context("the producer task")??;
                }
                let (final_, _) = store::bench::progress(&pg).await?;
                polls += 1;
                if final_ as u64 >= total {
                    break;
                }
            }
        } else if Instant::now() >= next_poll {
            next_poll = Instant::now() + Duration::from_millis(100);
            if let Some(h) = enqueue_timer.take_if(|h| h.is_finished()) {
                // A failed enqueue ends the run now, not at the timeout.
                enqueue_took = Some(h.await.context("the producer task")??);
            }
            let d = {
                let mut c = redis.get().await?;
                crate::stream::depth::read(&mut *c, &s_keys(&global), None).await?
            };
            // Entries added: what the group read plus its lag (the streams' lengths shrink as
            // acked entries are trimmed).
            let length: u64 = d.lanes.values().map(|l| l.entries_read + l.lag).sum();
            let open: u64 = d.lanes.values().map(|l| l.lag + l.pending).sum::<u64>() + d.delayed;
            let bulk_open = d.lanes.get("bulk").map_or(0, |l| l.lag + l.pending);
            let tx_over = a.tx_secs > 0 && tx_start.elapsed().as_secs() >= a.tx_secs;
            if tx_open && (tx_over || (a.tx_secs == 0 && length >= a.emails && bulk_open == 0)) {
                tx_open = false;
            }
            if !tx_open && length >= total + tx_sent && open == 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("not every email was recorded within {} s", a.timeout_secs);
        }
        if tx_open {
            let due = (tx_start.elapsed().as_secs_f64() * a.tx_rate as f64) as u64;
            if due > tx_sent {
                let n = due - tx_sent;
                produce(&producer, a.emails + tx_sent, n, 0, |_| Lane::Tx, &body).await?;
                tx_sent += n;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emails = total + tx_sent;
    if let Some(h) = enqueue_timer.take() {
        enqueue_took = Some(h.await.context("the producer task")??);
    }

    // Evidence, before the workers stop.
    let calls_after = match cluster {
        Some(c) => c.command_calls().await?,
        None => crate::stream::command_calls(&mut *redis.get().await?).await?,
    };
    let cpu_after = sample(&workers, &redis_pids, mock.id());
    let mut cpu = 0.0;
    let mut rss: f64 = 0.0;
    for w in &workers {
        if let Some(pid) = w.child.id() {
            let (c, r) = cpu_and_rss(pid)?;
            cpu += c;
            rss = rss.max(r);
        }
    }
    let all = store::bench::latency(&pg, None).await?;
    let tx = store::bench::latency(&pg, Some("tx")).await?;
    let bulk = store::bench::latency(&pg, Some("bulk")).await?;
    let (_, sent) = store::bench::progress(&pg).await?;
    polls += 4; // the four reads just above
    let ambiguous = store::bench::ambiguous(&pg).await?;
    polls += 1;
    let fairness = if tenant_run {
        polls += 2;
        Some(fair_figures(&pg, a).await?)
    } else {
        None
    };
    let stats: crate::mock::Stats = http
        .get(format!("{mock_url}/stats"))
        .send()
        .await?
        .json()
        .await
        .context("the mock's /stats")?;

    // Stop the workers: their backends report their last transactions as they exit.
    for w in &mut workers {
        if let Some(pid) = w.child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(40), w.child.wait()).await;
    }
    let _ = mock.kill().await;
    if let Some(c) = &config {
        let _ = std::fs::remove_file(c);
    }
    // Closed connections have flushed their statistics: the ledger's statements count too.
    producer.close().await;
    pg.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let xacts_after = store::bench::xacts(s.admin(), &s.db).await?;

    let per = |n: f64| n / emails as f64;
    let mut deltas: Vec<(String, f64)> = calls_after
        .iter()
        .map(|(k, v)| {
            let d = v.saturating_sub(calls_before.get(k).copied().unwrap_or(0));
            (k.clone(), d as f64)
        })
        .filter(|(k, d)| *d > 0.0 && k != "info")
        .collect();
    let redis_total: f64 = deltas.iter().map(|(_, d)| d).sum();
    deltas.sort_by(|x, y| y.1.total_cmp(&x.1));
    // A backlog enqueued before the workers started drains from the first claim.
    let began = |l: &Latency| {
        if a.scenario == Scenario::Priority {
            l.first_claimed_ms
        } else {
            l.first_enqueued_ms
        }
    };
    let seconds = ((all.last_recorded_ms - began(&all)) / 1000.0).max(0.001);
    let pick = |l: &Latency, f: fn(&Latency) -> f64| (l.count > 0).then(|| f(l));
    Ok(Figures {
        scenario: a.scenario,
        emails,
        workers: a.workers,
        redis: if cluster.is_some() {
            "cluster"
        } else {
            "single"
        },
        partitions: g.partitions,
        durability: g.durability.as_str(),
        offered_per_sec: (a.rate > 0 && a.scenario == Scenario::Throughput).then_some(a.rate),
        payload_bytes: a.payload_bytes,
        mock_latency_ms: a.mock_latency_ms,
        mock_latency_p99_ms: (a.mock_latency_p99_ms > 0).then_some(a.mock_latency_p99_ms),
        seconds: round(seconds, 2),
        emails_per_sec: round(all.count as f64 / seconds, 0),
        enqueue_per_sec: enqueue_took
            .filter(|_| a.rate == 0)
            .map(|d| round(a.emails as f64 / d.as_secs_f64().max(0.001), 0)),
        p50_ms: round(all.p50_ms, 1),
        p95_ms: round(all.p95_ms, 1),
        p99_ms: round(all.p99_ms, 1),
        max_ms: round(all.max_ms, 1),
        tx_p50_ms: pick(&tx, |l| round(l.p50_ms, 1)).filter(|_| a.scenario == Scenario::Priority),
        tx_p99_ms: pick(&tx, |l| round(l.p99_ms, 1)).filter(|_| a.scenario == Scenario::Priority),
        bulk_p50_ms: pick(&bulk, |l| round(l.p50_ms, 1))
            .filter(|_| a.scenario == Scenario::Priority),
        bulk_p99_ms: pick(&bulk, |l| round(l.p99_ms, 1))
            .filter(|_| a.scenario == Scenario::Priority),
        tx_emails: (a.scenario == Scenario::Priority).then_some(tx_sent),
        bulk_per_sec: (bulk.count > 0).then(|| {
            let secs = ((bulk.last_recorded_ms - began(&bulk)) / 1000.0).max(0.001);
            round(bulk.count as f64 / secs, 1)
        }),
        limit_per_sec: (a.limit > 0).then_some(a.limit),
        fairness,
        max_window_count: stats.max_window_count,
        rejected_by_provider: stats.rate_limited,
        redis_cmds_per_email: round(per(redis_total), 3),
        redis_top: deltas
            .into_iter()
            .take(3)
            .map(|(k, d)| (k, round(per(d), 3)))
            .collect(),
        pg_xacts_per_email: round(per((xacts_after - xacts_before - polls).max(0) as f64), 4),
        worker_cpu_s_per_1k: round(cpu / emails as f64 * 1000.0, 3),
        worker_peak_rss_mib: round(rss, 1),
        lost: emails.saturating_sub(sent.max(0) as u64),
        duplicates: stats.duplicates,
        ambiguous: ambiguous.max(0) as u64,
        cpu_s_per_1k: {
            let k = 1000.0 / emails as f64;
            let d = |f: fn(&CpuSample) -> f64| (f(&cpu_after) - f(&cpu_before)).max(0.0);
            let watched = d(|c| c.workers) + d(|c| c.redis) + d(|c| c.mock) + d(|c| c.producer);
            CpuBreakdown {
                workers: round(d(|c| c.workers) * k, 4),
                redis: round(d(|c| c.redis) * k, 4),
                mock: round(d(|c| c.mock) * k, 4),
                producer: round(d(|c| c.producer) * k, 4),
                rest: round((d(|c| c.busy) - watched).max(0.0) * k, 4),
                machine_busy: round(d(|c| c.busy) / d(|c| c.total).max(1e-9), 3),
            }
        },
    })
}

/// The fairness scenarios' figures, from the `emails` rows.
async fn fair_figures(pg: &sqlx::PgPool, a: &PipelineArgs) -> anyhow::Result<FairFigures> {
    let spans = store::bench::tenant_spans(pg).await?;
    let mut f = FairFigures {
        tenants: spans.len() as u64,
        ..FairFigures::default()
    };
    let secs = |from: f64, to: f64| ((to - from) / 1000.0).max(0.001);
    match a.scenario {
        Scenario::Fairness => {
            let small: Vec<_> = spans.iter().filter(|s| s.tenant != "big").collect();
            let (Some(from), Some(to)) = (
                small.iter().map(|s| s.first_enqueued_ms).reduce(f64::min),
                small.iter().map(|s| s.last_recorded_ms).reduce(f64::max),
            ) else {
                return Ok(f);
            };
            f.max_small_tenant_finish_s = small
                .iter()
                .map(|s| round(secs(s.first_enqueued_ms, s.last_recorded_ms), 2))
                .reduce(f64::max);
            let during = store::bench::sent_between(pg, from, to).await?;
            let all: i64 = during.iter().map(|(_, n)| n).sum();
            let big = during
                .iter()
                .find(|(t, _)| t == "big")
                .map_or(0, |(_, n)| *n);
            f.big_tenant_per_sec = Some(round(big as f64 / secs(from, to), 1));
            if a.limit > 0 {
                let share = f64::from(a.limit) / (small.len() as f64 + 1.0);
                f.fair_share_s = Some(round(a.tenant_emails as f64 / share, 2));
                f.utilisation = Some(round(all as f64 / secs(from, to) / f64::from(a.limit), 3));
            }
        }
        Scenario::Weights => {
            let of = |t: &str| spans.iter().find(|s| s.tenant == t);
            let (Some(gold), Some(free)) = (of("gold"), of("free")) else {
                return Ok(f);
            };
            let from = gold.first_enqueued_ms.min(free.first_enqueued_ms);
            let to = gold.last_recorded_ms.min(free.last_recorded_ms);
            let during = store::bench::sent_between(pg, from, to).await?;
            let n = |t: &str| during.iter().find(|(x, _)| x == t).map_or(0, |(_, n)| *n) as f64;
            f.gold_share = Some(round(n("gold") / (n("gold") + n("free")).max(1.0), 3));
            let w = f64::from(a.gold_weight.max(1));
            f.gold_expected_share = Some(round(w / (w + 1.0), 3));
        }
        _ => {}
    }
    Ok(f)
}

fn s_keys(g: &Global) -> crate::stream::Keys {
    crate::stream::Keys::new(&g.prefix, g.partitions)
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat =
            "1234 (mail fleet) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_seconds(stat, 100.0).unwrap(), 3.0);
        let status =
            "Name:\tmailfleet\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(peak_rss_mib(status).unwrap(), 50.0);
        assert!(peak_rss_mib("Name: x\n").is_err());
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(machine_cpu(stat, 100.0).unwrap(), (1.5, 10.0));
    }
}
