use crate::config::MockArgs;
use crate::mock::{self, MockConfig};
use anyhow::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(a: MockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        [a.failure_rate, a.drop_rate, a.accepted_error_rate]
            .iter()
            .all(|r| (0.0..=1.0).contains(r)),
        "--failure-rate, --drop-rate and --accepted-error-rate must be between 0 and 1"
    );
    if let Some(n) = a.nice {
        anyhow::ensure!((-20..=19).contains(&n), "--nice must be between -20 and 19");
        if let Err(e) = renice(n) {
            eprintln!("mock-provider: could not set niceness {n} ({e}); running at the default");
        }
    }
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

/// Set every thread of this process to niceness `n` (on Linux, niceness is per thread; the
/// threads started later inherit it from the ones that start them).
fn renice(n: i32) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority has no memory-safety preconditions; it reads only its arguments.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, n) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
