//! The `mailfleet` binary: parse the command line, install the TLS crypto provider and
//! telemetry, dispatch to `cli/`.

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
    let cli = Cli::parse_args();
    mailfleet::telemetry::init(&cli.global.log_format);
    let json = cli.global.log_format == "json";
    let redis_shown = cli.global.redis_shown();
    match mailfleet::cli::dispatch(cli.global, cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once, each cause once; not anyhow's Debug (a backtrace under RUST_BACKTRACE). A
            // log collector (JSON logs) gets it as an event, a person as one plain line.
            let mut line = mailfleet::telemetry::one_line(&e);
            if mailfleet::telemetry::is_redis_error(&e) && !line.contains(&redis_shown) {
                line.push_str(&format!(
                    " (Redis at {redis_shown}: is it running and reachable? \
                     MAILFLEET_REDIS_URL names it)"
                ));
            }
            if mailfleet::telemetry::is_missing_table(&e) && !line.contains("migrate") {
                line.push_str(" (is the database migrated? run `mailfleet migrate`)");
            }
            if json {
                tracing::error!(error.message = %line, "mailfleet failed");
            } else {
                eprintln!("error: {line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
