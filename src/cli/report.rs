use crate::config::Global;
use crate::report;
use crate::store;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// File with every enqueued job id, one per line.
    #[arg(long)]
    pub ids: PathBuf,
    /// The mock provider's JSONL log.
    #[arg(long)]
    pub mock_log: PathBuf,
    /// Wall-clock seconds the run took (for the rate).
    #[arg(long)]
    pub seconds: f64,
    /// Name printed at the start of the summary line (the scenario, with --json).
    #[arg(long, default_value = "demo")]
    pub label: String,
    /// Print one JSON line (chaos scenarios) instead of the table; exit 1 unless ok.
    #[arg(long)]
    pub json: bool,
    /// With --json: any duplicate fails the run, ambiguous events or not.
    #[arg(long)]
    pub no_duplicates: bool,
    /// With --json: the run is ok only if the dead-letter streams hold exactly this many entries.
    #[arg(long)]
    pub expect_dead_letters: Option<u64>,
    /// With --json: also judge this schedule's ticks before --until (every tick fired once,
    /// none later than --lease-ttl-ms + 1 s).
    #[arg(long, requires = "until")]
    pub schedule: Option<String>,
    /// RFC 3339: the end of the judged tick range (when the schedule was paused).
    #[arg(long, value_parser = crate::config::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// Stale leaders' writes rejected, as scraped from the workers' metrics.
    #[arg(long, default_value_t = 0)]
    pub stale_writes_rejected: u64,
    /// With --json and --mock-stats: judge the provider's view of a limit of this many
    /// requests per second (every 1-second window at or under it, no 429, >= 95% achieved).
    #[arg(long, requires = "mock_stats")]
    pub limit_per_sec: Option<u32>,
    /// With --limit-per-sec: the share of the limit the run must achieve (0: report the rate
    /// without judging it, as CI's short form does: a rate is the machine's as much as ours).
    #[arg(long, default_value_t = 0.95)]
    pub min_share: f64,
    /// The mock's final stats (the JSON line it prints when it stops).
    #[arg(long)]
    pub mock_stats: Option<PathBuf>,
    /// With --json: judge a failover away from this dialect (the primary) during the outage
    /// --outage-from-ms..--outage-until-ms (unix ms), read from --mock-log.
    #[arg(long, requires_all = ["outage_from_ms", "outage_until_ms"])]
    pub failover_primary: Option<String>,
    #[arg(long)]
    pub outage_from_ms: Option<i64>,
    #[arg(long)]
    pub outage_until_ms: Option<i64>,
    /// Workers whose metrics showed the primary's breaker open during the outage.
    #[arg(long, default_value_t = 0)]
    pub breaker_open_seen: u64,
}

pub async fn run(g: Global, a: ReportArgs) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    let r = report::build(&pool, &a.ids, &a.mock_log, a.seconds).await?;
    if !a.json {
        print!("{}", r.table());
        println!("{}", r.line(&a.label));
        return Ok(());
    }
    let keys = crate::stream::Keys::new(&g.prefix, g.partitions);
    let mut conn = super::redis_pool(&g)?.get().await?;
    let dead_letters = crate::dlq::count(&mut *conn, &keys).await?;
    let v = r.json(
        &a.label,
        a.no_duplicates,
        dead_letters,
        a.expect_dead_letters,
    );
    let mut v = v;
    if let (Some(name), Some(until)) = (&a.schedule, a.until) {
        let t = report::ticks(
            &pool,
            name,
            until,
            a.lease_ttl_ms as f64 + 1000.0,
            a.stale_writes_rejected,
        )
        .await?;
        let ok = v["ok"] == serde_json::Value::Bool(true) && t.ok();
        v["ticks_expected"] = t.expected.into();
        v["ticks_fired"] = t.fired.into();
        v["ticks_duplicated"] = t.duplicated.into();
        v["max_tick_lag_ms"] = (t.max_lag_ms.round() as i64).into();
        v["stale_writes_rejected"] = t.stale_writes_rejected.into();
        v["ok"] = ok.into();
    }
    if let (Some(limit), Some(path)) = (a.limit_per_sec, &a.mock_stats) {
        let text = std::fs::read_to_string(path)?;
        let stats: crate::mock::Stats = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow::anyhow!("no stats line in {}", path.display()))?;
        let r = report::rate(&stats, limit);
        let ok = v["ok"] == serde_json::Value::Bool(true) && r.ok_with(a.min_share);
        v["limit_per_sec"] = r.limit_per_sec.into();
        v["max_window_count"] = r.max_window_count.into();
        v["achieved_per_sec"] = ((r.achieved_per_sec * 10.0).round() / 10.0).into();
        v["rejected_by_provider"] = r.rejected_by_provider.into();
        v["ok"] = ok.into();
    }
    if let (Some(primary), Some(from), Some(until)) =
        (&a.failover_primary, a.outage_from_ms, a.outage_until_ms)
    {
        let f = report::failover(&a.mock_log, primary, from, until)?;
        let ok = v["ok"] == serde_json::Value::Bool(true) && f.ok() && a.breaker_open_seen > 0;
        v["outage_ms"] = (until - from).into();
        v["moved_after_ms"] = f.moved_after_ms.into();
        v["returned_after_ms"] = f.returned_after_ms.into();
        v["primary_during_outage"] = f.primary_during_outage.into();
        v["breaker_open_seen"] = a.breaker_open_seen.into();
        v["dead"] = dead_letters.into();
        v["ok"] = ok.into();
    }
    println!("{v}");
    if v["ok"] != serde_json::Value::Bool(true) {
        std::process::exit(1);
    }
    Ok(())
}
