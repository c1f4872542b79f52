use crate::api::{self, ingest};
use crate::config::{Global, Secret};
use crate::{shutdown, store};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Listen address.
    #[arg(long, env = "MAILFLEET_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Accepted bearer API keys, comma-separated. Requests without one get 401.
    #[arg(
        long,
        env = "MAILFLEET_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub api_keys: Vec<Secret>,
}

pub async fn run(g: Global, a: ApiArgs) -> anyhow::Result<()> {
    let pg = store::connect(g.database_url.expose(), 8).await?;
    store::ensure_migrated(&pg).await?;
    let producer = super::producer(&g)?;
    let redis = super::redis_pool(&g)?;
    let state = ingest::ApiState::new(producer, pg.clone(), &a.api_keys, g.max_payload_bytes);
    let draining = Arc::new(AtomicBool::new(false));
    let router = ingest::router(state).merge(api::ops_router(api::Health {
        redis,
        pg,
        draining: draining.clone(),
    }));
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding the API address {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    println!("api listening on http://{addr}");
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    api::serve(listener, router, token).await?;
    Ok(())
}
