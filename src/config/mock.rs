//! The mock provider's settings (`mailfleet mock-provider`): latency, faults and limits.

use clap::Args;
use std::path::PathBuf;

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
    /// Run at this CPU niceness (-20 to 19; below 0 needs root or CAP_SYS_NICE, else a
    /// warning). A real provider does not share the workers' cores: on a small machine, a
    /// negative value keeps the workers' load from delaying when the mock sees a request.
    #[arg(long, env = "MAILFLEET_MOCK_NICE", allow_hyphen_values = true)]
    pub nice: Option<i32>,
}
