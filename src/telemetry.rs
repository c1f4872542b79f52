//! Tracing setup. Log lines carry structured fields first and a message last; they never carry
//! a recipient address, a body or a secret: log the recipient *domain* and the job id instead.

use tracing_subscriber::{EnvFilter, fmt};

/// Install the global subscriber. `format` is `json` or `text`; `RUST_LOG` filters (default info).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}
