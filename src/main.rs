//! The `mailfleet` binary: parse the command line, install the TLS crypto provider and
//! telemetry, dispatch to `cli/`.

use clap::Parser;
use mailfleet::cli::Cli;

/// mimalloc instead of glibc's malloc: in the pipeline profile glibc's malloc/free took about a
/// fifth of a worker's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One rustls crypto provider (ring) for reqwest and sqlx alike; without it rustls panics at
    // the first TLS handshake when more than one provider is compiled in.
    mailfleet::install_crypto_provider();
    let cli = Cli::parse();
    mailfleet::telemetry::init(&cli.global.log_format);
    match mailfleet::cli::dispatch(cli.global, cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain, not anyhow's Debug: that would append a backtrace under RUST_BACKTRACE.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            tracing::error!(error.message = %e, error.cause_chain = ?chain, "mailfleet failed");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
