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
    /// Log-normal latency: with this p99 (ms), `--latency-ms` is the median.
    #[arg(long, env = "MAILFLEET_MOCK_LATENCY_P99_MS")]
    pub latency_p99_ms: Option<u64>,
    /// Share of requests accepted, logged, then answered with a connection reset, 0.0 to 1.0.
    #[arg(long, env = "MAILFLEET_MOCK_DROP_RATE", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Share of requests accepted, logged, then answered 500, 502 or 504 in turn (a gateway
    /// that lost the vendor's reply), 0.0 to 1.0.
    #[arg(
        long,
        env = "MAILFLEET_MOCK_ACCEPTED_ERROR_RATE",
        default_value_t = 0.0
    )]
    pub accepted_error_rate: f64,
    /// An outage: answer every request 503 starting this many ms after start...
    #[arg(long, env = "MAILFLEET_MOCK_OUTAGE_AFTER_MS", default_value_t = 0)]
    pub outage_after_ms: u64,
    /// ...for this many ms (0: no outage).
    #[arg(long, env = "MAILFLEET_MOCK_OUTAGE_FOR_MS", default_value_t = 0)]
    pub outage_for_ms: u64,
    /// Each dialect's limit: at most this many requests in any window (0: unlimited); more
    /// are answered 429 with the vendor's headers.
    #[arg(long, env = "MAILFLEET_MOCK_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// The limit's sliding window, in ms.
    #[arg(long, env = "MAILFLEET_MOCK_RATE_WINDOW_MS", default_value_t = 1000)]
    pub rate_window_ms: u64,
    /// Check SES requests' SigV4 signatures with this secret access key.
    #[arg(long, env = "MAILFLEET_MOCK_SES_SECRET", hide_env_values = true)]
    pub ses_secret: Option<String>,
    /// Also speak SMTP (plain) on this address.
    #[arg(long, env = "MAILFLEET_MOCK_SMTP_LISTEN")]
    pub smtp_listen: Option<String>,
    /// JSONL file every accepted job id is appended to.
    #[arg(long, env = "MAILFLEET_MOCK_LOG")]
    pub log: Option<PathBuf>,
}

pub async fn run(a: MockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        [a.failure_rate, a.drop_rate, a.accepted_error_rate]
            .iter()
            .all(|r| (0.0..=1.0).contains(r)),
        "--failure-rate, --drop-rate and --accepted-error-rate must be between 0 and 1"
    );
    let server = mock::build(MockConfig {
        latency: Duration::from_millis(a.latency_ms),
        jitter: Duration::from_millis(a.jitter_ms),
        failure_rate: a.failure_rate,
        log: a.log.clone(),
        throttle_every: Duration::from_millis(a.throttle_every_ms),
        throttle_for: Duration::from_millis(a.throttle_for_ms),
        latency_p99: a.latency_p99_ms.map(Duration::from_millis),
        drop_rate: a.drop_rate,
        accepted_error_rate: a.accepted_error_rate,
        outage_after: Duration::from_millis(a.outage_after_ms),
        outage_for: Duration::from_millis(a.outage_for_ms),
        rate_limit: (a.rate_limit > 0).then(|| mock::RateLimit {
            limit: a.rate_limit,
            window: Duration::from_millis(a.rate_window_ms.max(1)),
        }),
        ses_secret: a.ses_secret.clone(),
        capture: 0,
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
    if a.outage_for_ms > 0 {
        let start = chrono::Utc::now().timestamp_millis() + a.outage_after_ms as i64;
        println!(
            "mock-provider outage from_ms={start} until_ms={}",
            start + a.outage_for_ms as i64
        );
    }
    let token = CancellationToken::new();
    crate::shutdown::cancel_on_signal(token.clone());
    let mock::MockServer {
        router,
        state,
        log_writer,
    } = server;
    if let Some(addr) = &a.smtp_listen {
        let smtp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("mock-provider SMTP on {}", smtp.local_addr()?);
        tokio::spawn(mock::smtp::serve(smtp, state.clone(), token.clone()));
    }
    mock::serve(listener, router, token).await?;
    let stats = state.stats();
    drop(state);
    if let Some(w) = log_writer {
        w.await??;
    }
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
