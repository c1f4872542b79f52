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
    println!("{v}");
    if v["ok"] != serde_json::Value::Bool(true) {
        std::process::exit(1);
    }
    Ok(())
}
