//! What `mailfleet bench` prints: one run's figures (`--json` prints them as one object).

use crate::config::Scenario;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub scenario: Scenario,
    pub emails: u64,
    pub workers: usize,
    /// Redis: `single` or `cluster` (6 local nodes, 3 masters).
    pub redis: &'static str,
    pub partitions: u16,
    /// The producer's enqueue durability (`ledger`, `replicated` or `redis`).
    pub durability: &'static str,
    pub offered_per_sec: Option<u64>,
    pub payload_bytes: usize,
    pub mock_latency_ms: u64,
    /// The mock's p99 when its latency is log-normal (`--mock-latency-p99-ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mock_latency_p99_ms: Option<u64>,
    pub seconds: f64,
    pub emails_per_sec: f64,
    /// Emails the producer enqueued per second (at the maximum rate, while the workers drain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueue_per_sec: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_p99_ms: Option<f64>,
    /// Tx emails sent during the priority scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_emails: Option<u64>,
    /// Bulk emails recorded per second, from the first bulk enqueue to the last bulk record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_per_sec: Option<f64>,
    /// The provider limit (`--limit`), per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_per_sec: Option<u32>,
    /// The most requests the mock saw in any 1 s window (rejected ones included).
    pub max_window_count: u64,
    /// Requests the mock answered 429 (over its limit).
    pub rejected_by_provider: u64,
    /// The fairness scenarios' figures.
    #[serde(flatten)]
    pub fairness: Option<FairFigures>,
    pub redis_cmds_per_email: f64,
    /// The three commands that cost the most calls per email.
    pub redis_top: Vec<(String, f64)>,
    pub pg_xacts_per_email: f64,
    pub worker_cpu_s_per_1k: f64,
    pub worker_peak_rss_mib: f64,
    pub lost: u64,
    pub duplicates: u64,
    /// Attempts recorded `unknown` (see `store::bench::ambiguous`): duplicates may not exceed it.
    pub ambiguous: u64,
    /// Where the machine's CPU went during the run, in CPU seconds per 1,000 emails: the
    /// workers, Redis (when local), the mock provider, this process (the producer), and the
    /// rest of the machine (Postgres, mostly).
    pub cpu_s_per_1k: CpuBreakdown,
}

impl Figures {
    /// The run as a table, for a person.
    pub fn table(&self) -> String {
        let f = self;
        let mut o = String::new();
        use std::fmt::Write;
        let offered = f
            .offered_per_sec
            .map_or("max".to_owned(), |r| format!("{r}/s"));
        let _ = writeln!(
            o,
            "scenario {:?}: {} emails, {} worker process(es), offered {offered}, payload {} B, mock latency {} ms, Redis {} with {} partition(s)",
            f.scenario,
            f.emails,
            f.workers,
            f.payload_bytes,
            f.mock_latency_ms,
            f.redis,
            f.partitions
        );
        let _ = writeln!(
            o,
            "  throughput        {:>10.0} emails/s over {:.2} s",
            f.emails_per_sec, f.seconds
        );
        if let Some(r) = f.enqueue_per_sec {
            let _ = writeln!(
                o,
                "  enqueue           {r:>10.0} emails/s (durability {})",
                f.durability
            );
        }
        let _ = writeln!(
            o,
            "  enqueue→recorded  p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            f.p50_ms, f.p95_ms, f.p99_ms, f.max_ms
        );
        if let (Some(p50), Some(p99)) = (f.tx_p50_ms, f.tx_p99_ms) {
            let _ = writeln!(o, "  tx lane           p50 {p50:.1} ms  p99 {p99:.1} ms");
        }
        if let (Some(p50), Some(p99)) = (f.bulk_p50_ms, f.bulk_p99_ms) {
            let rate = f
                .bulk_per_sec
                .map_or(String::new(), |r| format!("  ({r:.1} emails/s)"));
            let _ = writeln!(
                o,
                "  bulk lane         p50 {p50:.1} ms  p99 {p99:.1} ms{rate}"
            );
        }
        if let Some(l) = f.limit_per_sec {
            let _ = writeln!(
                o,
                "  provider limit    {l}/s: busiest 1 s window {}, rejected {}",
                f.max_window_count, f.rejected_by_provider
            );
        }
        if let Some(x) = &f.fairness {
            let _ = writeln!(o, "  tenants           {}", x.tenants);
            if let (Some(share), Some(max)) = (x.fair_share_s, x.max_small_tenant_finish_s) {
                let _ = writeln!(
                    o,
                    "  small tenants     slowest finished in {max:.1} s; fair share {share:.1} s ({:.2}x)",
                    max / share.max(1e-9)
                );
            }
            if let (Some(big), Some(u)) = (x.big_tenant_per_sec, x.utilisation) {
                let _ = writeln!(
                    o,
                    "  meanwhile         big sent {big:.1}/s; utilisation {:.1}% of the limit",
                    u * 100.0
                );
            }
            if let (Some(g), Some(e)) = (x.gold_share, x.gold_expected_share) {
                let _ = writeln!(
                    o,
                    "  weights           gold got {:.1}% while both waited (entitled to {:.1}%)",
                    g * 100.0,
                    e * 100.0
                );
            }
        }
        let top: Vec<String> = f
            .redis_top
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            o,
            "  redis commands    {:.3} per email ({})",
            f.redis_cmds_per_email,
            top.join(", ")
        );
        let _ = writeln!(
            o,
            "  pg transactions   {:.4} per email",
            f.pg_xacts_per_email
        );
        let _ = writeln!(
            o,
            "  workers           {:.3} CPU s per 1k emails, peak RSS {:.1} MiB",
            f.worker_cpu_s_per_1k, f.worker_peak_rss_mib
        );
        let c = &f.cpu_s_per_1k;
        let _ = writeln!(
            o,
            "  CPU s per 1k      workers {:.3}, redis {:.3}, mock {:.3}, producer {:.3}, rest (postgres) {:.3}; machine {:.0}% busy",
            c.workers,
            c.redis,
            c.mock,
            c.producer,
            c.rest,
            c.machine_busy * 100.0
        );
        let _ = writeln!(
            o,
            "  lost {}  duplicates {}  ambiguous {}",
            f.lost, f.duplicates, f.ambiguous
        );
        o
    }
}

/// What the fairness, weights and tenants scenarios measure (from the `emails` rows).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FairFigures {
    /// Tenants that sent (the big one included).
    pub tenants: u64,
    /// Fairness: a small tenant's emails over its equal share of the limit, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fair_share_s: Option<f64>,
    /// Fairness: the slowest small tenant's first enqueue to last record, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_small_tenant_finish_s: Option<f64>,
    /// Fairness: tenant `big`'s sends per second while the small tenants were sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub big_tenant_per_sec: Option<f64>,
    /// Fairness: everything sent while the small tenants were sending, over the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilisation: Option<f64>,
    /// Weights: `gold`'s share of the sends while both tenants had a backlog, and what its
    /// weight entitles it to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_expected_share: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuBreakdown {
    pub workers: f64,
    pub redis: f64,
    pub mock: f64,
    pub producer: f64,
    pub rest: f64,
    /// The machine's busy share of all its cores over the run.
    pub machine_busy: f64,
}
