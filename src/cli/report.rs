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
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// Stale leaders' writes rejected, as scraped from the workers' metrics.
    #[arg(long, default_value_t = 0)]
    pub stale_writes_rejected: u64,
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
    println!("{v}");
    if v["ok"] != serde_json::Value::Bool(true) {
        std::process::exit(1);
    }
    Ok(())
}
