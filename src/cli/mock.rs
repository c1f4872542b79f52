use crate::mock::{self, MockConfig};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Listen address.
    #[arg(long, env = "MAILFLEET_MOCK_LISTEN", default_value = "127.0.0.1:8025")]
    pub listen: String,
    /// Fixed latency added to every request, in ms.
    #[arg(long, env = "MAILFLEET_MOCK_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra random latency, uniformly 0..jitter, in ms.
    #[arg(long, env = "MAILFLEET_MOCK_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Share of requests answered 503, 0.0 to 1.0.
    #[arg(long, env = "MAILFLEET_MOCK_FAILURE_RATE", default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Bursts of 429 (Retry-After: 1): one every this many ms (0: none)...
    #[arg(long, env = "MAILFLEET_MOCK_THROTTLE_EVERY_MS", default_value_t = 0)]
    pub throttle_every_ms: u64,
    /// ...lasting this many ms.
    #[arg(long, env = "MAILFLEET_MOCK_THROTTLE_FOR_MS", default_value_t = 0)]
    pub throttle_for_ms: u64,
    /// JSONL file every accepted job id is appended to.
    #[arg(long, env = "MAILFLEET_MOCK_LOG")]
    pub log: Option<PathBuf>,
}

pub async fn run(a: MockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.failure_rate),
        "--failure-rate must be between 0 and 1"
    );
    let server = mock::build(MockConfig {
        latency: Duration::from_millis(a.latency_ms),
        jitter: Duration::from_millis(a.jitter_ms),
        failure_rate: a.failure_rate,
        log: a.log.clone(),
        throttle_every: Duration::from_millis(a.throttle_every_ms),
        throttle_for: Duration::from_millis(a.throttle_for_ms),
    })
    .await
    .context("creating the mock's log")?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    println!(
        "mock-provider listening on http://{}",
        listener.local_addr()?
    );
    let token = CancellationToken::new();
    crate::shutdown::cancel_on_signal(token.clone());
    let mock::MockServer {
        router,
        state,
        log_writer,
    } = server;
    crate::api::serve(listener, router, token).await?;
    let stats = state.stats();
    drop(state);
    if let Some(w) = log_writer {
        w.await??;
    }
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
