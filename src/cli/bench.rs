//! `mailfleet bench`: hands its settings to the harness in `crate::bench`.

use crate::config::{BenchArgs, Global};

pub async fn run(g: Global, a: BenchArgs) -> anyhow::Result<()> {
    crate::bench::run(g, a).await
}
