//! `mailfleet status [--watch] [--json]`: the cluster at a glance, from Redis and Postgres
//! (not from any one worker): lanes (backlog, pending, oldest pending, sent per second over
//! the last minute, entries kept), delayed, dead letters, workers alive, the scheduler's
//! leader and fence, each provider's breaker as every live worker last reported it and
//! whether it is paused, and outcome totals for the last minute, today and every row kept.

use crate::cluster::{RATE_WINDOW_SECS, Snapshot, breaker_name, snapshot};
use crate::config::Global;
use crate::store;
use crate::stream;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Refresh every this many seconds until interrupted.
    #[arg(long, num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn table(s: &Snapshot) -> String {
    let mut o = String::new();
    // BACKLOG: added and not yet read by any worker; PENDING: read, not yet acked; KEPT: what
    // the stream holds, acked entries included until the leader trims them.
    let _ = writeln!(
        o,
        "{:<6} {:>9} {:>9} {:>12} {:>10} {:>10}",
        "LANE", "BACKLOG", "PENDING", "OLDEST(s)", "SENT/s", "KEPT"
    );
    for (lane, d) in &s.depth.lanes {
        let sent = s
            .recent
            .get(*lane)
            .and_then(|m| m.get(crate::domain::Status::Sent.as_str()))
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "{:<6} {:>9} {:>9} {:>12.1} {:>10.1} {:>10}",
            lane,
            d.lag,
            d.pending,
            d.oldest_pending_ms as f64 / 1000.0,
            sent as f64 / RATE_WINDOW_SECS,
            d.length
        );
    }
    let _ = writeln!(
        o,
        "\ndelayed {}   dead letters {}   workers alive {}",
        s.depth.delayed,
        s.depth.dead,
        s.depth.workers.len()
    );
    if !s.depth.workers.is_empty() {
        let now = chrono::Utc::now().timestamp_millis();
        let _ = writeln!(
            o,
            "{:<40} {:<9} {:>10} {:>10} {:>12}",
            "WORKER", "VERSION", "UP", "IN FLIGHT", "REPORTED(s)"
        );
        for (name, at) in &s.depth.workers {
            let info = s.depth.worker_info.get(name);
            let _ = writeln!(
                o,
                "{:<40} {:<9} {:>10} {:>10} {:>12.1}",
                name,
                info.map_or("-", |i| i.version.as_str()),
                info.map_or_else(|| "-".to_owned(), |i| uptime(now - i.started_ms)),
                info.map_or_else(|| "-".to_owned(), |i| i.in_flight.to_string()),
                (now - at).max(0) as f64 / 1000.0
            );
        }
    }
    let leader = match &s.lease {
        Some((owner, ttl)) => format!("{owner} (lease {} ms left)", ttl.as_millis()),
        None => "none".into(),
    };
    let _ = writeln!(
        o,
        "leader  {leader}   fence {} (last written by {})",
        s.fence.0,
        s.fence.1.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        o,
        "\n{:<16} {:<10} {:<7} AS THE WORKERS SEE IT",
        "PROVIDER", "BREAKER", "PAUSED"
    );
    for (provider, by_worker) in &s.depth.breakers {
        let worst = by_worker.values().copied().max().unwrap_or(0);
        let open = by_worker.values().filter(|&&v| v > 0).count();
        let paused = s.depth.paused.contains_key(&format!("provider:{provider}"));
        let seen = if open == 0 {
            format!("closed on all {}", by_worker.len())
        } else {
            format!("not closed on {} of {}", open, by_worker.len())
        };
        let _ = writeln!(
            o,
            "{:<16} {:<10} {:<7} {seen}",
            provider,
            breaker_name(worst),
            if paused { "yes" } else { "no" },
        );
    }
    let t = &s.depth.tenants;
    if t.active > 0 {
        let _ = writeln!(
            o,
            "\nbulk tenants active {}{}   waiting {}   in flight {}   fairness spread {:.1}",
            t.active,
            if t.complete {
                ""
            } else {
                " (summed over the 10,000 least and most served per partition)"
            },
            t.waiting,
            t.in_flight,
            t.spread
        );
        let _ = writeln!(
            o,
            "{:<24} {:>10} {:>10} {:>12} {:>10}",
            "TENANT", "WAITING", "IN FLIGHT", "OLDEST(s)", "SENT/s"
        );
        for b in &t.busiest {
            let sent = s.tenant_sent.get(&b.tenant).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "{:<24} {:>10} {:>10} {:>12.1} {:>10.1}",
                b.tenant,
                b.waiting,
                b.in_flight,
                b.oldest_waiting_ms as f64 / 1000.0,
                sent as f64 / RATE_WINDOW_SECS
            );
        }
    }
    if !s.depth.paused.is_empty() {
        let names: Vec<&str> = s.depth.paused.keys().map(String::as_str).collect();
        let _ = writeln!(o, "\npaused: {}", names.join(", "));
    }
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for m in s.recent.values() {
        for (status, n) in m {
            *last.entry(status).or_default() += n;
        }
    }
    let outcomes: Vec<String> = last.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(o, "\nlast minute: {}", outcomes.join(", "));
    let today: Vec<String> = s
        .totals
        .iter()
        .filter(|(_, t)| t.today > 0)
        .map(|(k, t)| format!("{k} {}", t.today))
        .collect();
    let all: Vec<String> = s
        .totals
        .iter()
        .map(|(k, t)| format!("{k} {}", t.all))
        .collect();
    let _ = writeln!(o, "today (UTC): {}", today.join(", "));
    let _ = writeln!(o, "all rows kept: {}", all.join(", "));
    o
}

/// A duration in ms as `3d 4h`, `2h 5m`, `7m 3s` or `12s`.
fn uptime(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn as_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "lanes": s.depth.lanes,
        "delayed": s.depth.delayed,
        "dead_letters": s.depth.dead,
        "workers_alive": s.depth.workers.len(),
        "workers": s.depth.workers.iter().map(|(w, _)| w).collect::<Vec<_>>(),
        "worker_info": s.depth.worker_info,
        "leader": s.lease.as_ref().map(|(o, _)| o),
        "fence_token": s.fence.0,
        "breakers": s.depth.breakers,
        "paused": s.depth.paused,
        "tenants": s.depth.tenants,
        "tenant_sent_last_minute": s.tenant_sent,
        "last_minute": s.recent,
        "totals": s.totals,
    })
}

pub async fn run(g: Global, a: StatusArgs) -> anyhow::Result<()> {
    let pool = super::redis_pool(&g)?;
    let pg = store::connect(g.database_url.expose(), 2).await?;
    let keys = stream::Keys::new(&g.prefix, g.partitions);
    loop {
        let s = snapshot(&pool, &pg, &keys).await?;
        if a.json {
            println!("{}", as_json(&s));
        } else {
            if a.watch.is_some() {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&s));
        }
        let Some(every) = a.watch else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_reads_at_a_glance() {
        assert_eq!(super::uptime(12_400), "12s");
        assert_eq!(super::uptime(7 * 60_000 + 3_000), "7m 3s");
        assert_eq!(super::uptime((2 * 3600 + 5 * 60) * 1000), "2h 5m");
        assert_eq!(super::uptime((3 * 86_400 + 4 * 3600) * 1000), "3d 4h");
        assert_eq!(super::uptime(-5), "0s");
    }
}
