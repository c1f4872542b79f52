//! `mailfleet pause|resume <lane|provider|tenant> <name>`: every worker honours a pause within
//! a second (it reads the pauses every 500 ms). A paused lane is not read; a paused provider is
//! skipped like an open breaker (its jobs fail over, or wait when no provider is left); a
//! paused tenant's jobs are put back without using an attempt. `mailfleet status` lists them.

use crate::config::Global;
use crate::domain::Lane;
use crate::stream::pause::{self, Scope};
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    #[arg(value_enum)]
    pub scope: Scope,
    /// The lane (`tx`, `bulk`), provider name or tenant.
    pub name: String,
    /// Pause a provider no running worker knows (one about to be configured).
    #[arg(long)]
    pub force: bool,
}

pub async fn run(g: Global, a: PauseArgs, on: bool) -> anyhow::Result<()> {
    if a.scope == Scope::Lane {
        a.name.parse::<Lane>().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if a.scope == Scope::Tenant {
        crate::domain::check_tenant(&a.name)
            .map_err(|e| anyhow::anyhow!("the tenant name {:?} {e}", a.name))?;
    }
    anyhow::ensure!(
        !a.name.is_empty() && !a.name.contains(':') && a.name.len() <= 200,
        "a name is 1 to 200 characters without ':'"
    );
    let keys = crate::stream::Keys::new(&g.prefix, g.partitions);
    let mut conn = super::redis_pool(&g)?.get().await?;
    let what = format!("{} {}", a.scope.as_str(), a.name);
    if on && a.scope == Scope::Provider && !a.force {
        // A typo would pause nothing while saying "paused": the names the live workers report.
        let d = crate::stream::depth::read(&mut *conn, &keys, None).await?;
        if !d.workers.is_empty() && !d.breakers.contains_key(&a.name) {
            let known: Vec<&str> = d.breakers.keys().map(String::as_str).collect();
            anyhow::bail!(
                "no running worker has a provider named {:?} (theirs: {}); pass --force to pause it anyway",
                a.name,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    if on {
        let new = pause::set(&mut *conn, &keys, a.scope, &a.name).await?;
        println!(
            "{what}: {}",
            if new { "paused" } else { "was already paused" }
        );
    } else {
        let was = pause::clear(&mut *conn, &keys, a.scope, &a.name).await?;
        println!("{what}: {}", if was { "resumed" } else { "was not paused" });
    }
    Ok(())
}
