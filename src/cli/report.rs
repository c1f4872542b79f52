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
    /// Name printed at the start of the summary line.
    #[arg(long, default_value = "demo")]
    pub label: String,
}

pub async fn run(g: Global, a: ReportArgs) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    let r = report::build(&pool, &a.ids, &a.mock_log, a.seconds).await?;
    print!("{}", r.table());
    println!("{}", r.line(&a.label));
    Ok(())
}
