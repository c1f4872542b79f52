//! Tracing setup. Log lines carry structured fields first and a message last; they never carry
//! a recipient address, a body or a secret: log the recipient *domain* and the job id instead.

use tracing_subscriber::{EnvFilter, fmt};

/// Install the global subscriber. `format` is `json` or `text`; `RUST_LOG` filters (default info).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// An error and its causes on one line, each cause once: a cause whose text the line already
/// holds (many errors repeat their source's message in their own) is left out.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Whether `e` comes from Redis (a connection that failed, a command that did): the CLI's edge
/// then names the server, which Redis' own errors do not.
pub fn is_redis_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<redis::RedisError>() || c.is::<crate::stream::PoolError>())
}

/// Whether `e` is Postgres saying a table does not exist: a database not migrated yet.
pub fn is_missing_table(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .and_then(|s| s.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|code| code == "42P01")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_says_each_cause_once() {
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(root)
            .context("creating a connection: Connection refused")
            .context("no Redis connection at redis://127.0.0.1:6390");
        assert_eq!(
            super::one_line(&e),
            "no Redis connection at redis://127.0.0.1:6390: creating a connection: Connection refused"
        );
    }
}
