//! The processes a bench runs (the mock provider, workers) and what `/proc` says of them: CPU
//! seconds, peak RSS, and the machine's busy time.

use super::Scratch;
use crate::config::Global;
use anyhow::{Context, bail};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// CPU seconds of the processes the bench watches, and of the whole machine.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSample {
    pub(super) workers: f64,
    pub(super) redis: f64,
    pub(super) mock: f64,
    pub(super) producer: f64,
    pub(super) busy: f64,
    pub(super) total: f64,
}

/// Busy and total CPU seconds of the machine (every core), from /proc/stat.
pub fn machine_cpu(stat: &str, ticks: f64) -> anyhow::Result<(f64, f64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat cpu line")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ok(((total - idle) / ticks, total / ticks))
}

pub(super) fn proc_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .and_then(|s| cpu_seconds(&s, clock_ticks()).ok())
        .unwrap_or(0.0)
}

pub(super) fn sample(workers: &[Proc], redis: &[u32], mock: Option<u32>) -> CpuSample {
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| machine_cpu(&s, clock_ticks()).ok())
        .unwrap_or_default();
    CpuSample {
        workers: workers.iter().map(|w| proc_cpu(w.child.id())).sum(),
        redis: redis.iter().map(|p| proc_cpu(Some(*p))).sum(),
        mock: proc_cpu(mock),
        producer: proc_cpu(Some(std::process::id())),
        busy,
        total,
    }
}

pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) metrics: String,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The mock provider as its own process; returns it and its base URL.
/// With `limit` > 0 the mock answers 429 past `limit` requests in any 1 s window.
/// With `p99_ms` > 0 the latency is log-normal with median `latency_ms` and that p99.
pub(super) async fn start_mock(
    latency_ms: u64,
    p99_ms: u64,
    limit: u32,
) -> anyhow::Result<(Child, String)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["mock-provider", "--listen", "127.0.0.1:0"])
        .args(["--latency-ms", &latency_ms.to_string()]);
    if p99_ms > 0 {
        cmd.args(["--latency-p99-ms", &p99_ms.to_string()]);
    } else {
        cmd.args(["--jitter-ms", &latency_ms.to_string()]);
    }
    let mut child = cmd
        .args(["--rate-limit", &limit.to_string()])
        .args(["--rate-window-ms", "1000"])
        // The provider has cores of its own: the workers' load must not move its clock.
        .args(["--nice", "-5"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the mock provider")?;
    let stdout = child.stdout.take().context("the mock's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await? {
            if let Some(u) = l.split_whitespace().find(|w| w.starts_with("http://")) {
                return Ok::<_, std::io::Error>(Some(u.to_owned()));
            }
        }
        Ok(None)
    })
    .await
    .context("the mock provider did not start in 10 s")??
    .context("the mock provider exited")?;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

pub(super) async fn start_worker(
    g: &Global,
    s: &Scratch,
    consumer: &str,
    mock: &str,
    tasks: Option<usize>,
    config: Option<&std::path::Path>,
    tenant_weights: Option<&str>,
) -> anyhow::Result<Proc> {
    let port = free_port()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["worker", "--consumer", consumer])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("MAILFLEET_DATABASE_URL", &s.url)
        .env("MAILFLEET_REDIS_URL", g.redis_url.expose())
        .env("MAILFLEET_PREFIX", &s.prefix)
        .env("MAILFLEET_PARTITIONS", g.partitions.to_string())
        .env("MAILFLEET_SENDGRID_URL", mock)
        .env("MAILFLEET_SENDGRID_API_KEY", "bench-key")
        .env_remove("MAILFLEET_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = tasks {
        cmd.env("MAILFLEET_SEND_CONCURRENCY", t.to_string());
    }
    if let Some(c) = config {
        cmd.env("MAILFLEET_CONFIG", c);
    }
    if let Some(w) = tenant_weights {
        cmd.env("MAILFLEET_TENANT_WEIGHTS", w);
    }
    let child = cmd.spawn().context("starting a worker")?;
    Ok(Proc {
        child,
        metrics: format!("http://127.0.0.1:{port}"),
    })
}

/// CPU seconds (user + system) and peak RSS in MiB of a live process, from /proc.
pub(super) fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok((cpu_seconds(&stat, clock_ticks())?, peak_rss_mib(&status)?))
}

pub(super) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat, after the parenthesised name).
pub fn cpu_seconds(stat: &str, ticks: f64) -> anyhow::Result<f64> {
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, so index 11.
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

/// VmHWM of /proc/<pid>/status, in MiB.
pub fn peak_rss_mib(status: &str) -> anyhow::Result<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

pub(super) async fn ready(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{url} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
