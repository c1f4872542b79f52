//! Every metric, defined once with its help text. Names follow `mailfleet_<name>_<unit>`
//! (`_total` for counters); label values are bounded sets (lane, provider name from config,
//! outcome, reason code), never per-email.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    pub registry: Registry,
    pub emails: IntCounterVec,
    pub enqueued: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub provider_duration: HistogramVec,
    /// Messages per batch request, by provider (bulk sends coalesced, `provider::batch`).
    pub provider_batch_size: HistogramVec,
    /// Sends that went again because their batch was refused for another email's sake.
    pub batch_resends: IntCounterVec,
    pub end_to_end: HistogramVec,
    /// Per-lane wait at each stage where a job can wait: `admission` (in its stream until a
    /// reader had room), `send_slot`, `provider_slot` (a provider's concurrency cap) and
    /// `limiter` (a rate-limit permit).
    pub stage_wait: HistogramVec,
    pub record_batch: Histogram,
    pub stale_outcomes: IntCounter,
    pub ambiguous: IntCounterVec,
    pub already_final: IntCounter,
    pub duplicates_refused: IntCounter,
    pub promoted: IntCounter,
    pub reclaimed: IntCounter,
    pub stream_trimmed: IntCounter,
    pub reenqueued: IntCounter,
    pub in_flight: IntGauge,
    /// The size of each lane's in-flight room (bulk's adapts to the pipeline, `worker::room`).
    pub in_flight_limit: IntGaugeVec,
    pub store_errors: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub is_leader: IntGauge,
    pub fence_token: IntGauge,
    pub lease_renew_failures: IntCounter,
    pub fenced_rejected: IntCounter,
    pub tick_lag: Histogram,
    pub schedules_due: IntGauge,
    pub ticks: IntCounterVec,
    pub fanout_members: IntCounter,
    pub fanout_remaining: IntGauge,
    pub fanout_invalid: IntCounter,
    pub ratelimit_calls: IntCounterVec,
    pub ratelimit_given_back: IntCounterVec,
    pub ratelimit_wait: prometheus::CounterVec,
    pub provider_backoffs: IntCounterVec,
    pub provider_errors: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub failovers: IntCounterVec,
    pub deferred: IntCounter,
    pub queue_length: IntGaugeVec,
    pub queue_pending: IntGaugeVec,
    pub queue_lag: IntGaugeVec,
    pub oldest_pending: prometheus::GaugeVec,
    pub delayed: IntGauge,
    pub dead_letter_length: IntGauge,
    pub workers_alive: IntGauge,
    pub tenants_active: IntGauge,
    pub fair_spread: prometheus::Gauge,
    pub redis_memory_ratio: prometheus::Gauge,
    pub suppressed: IntCounter,
    pub paused: IntGaugeVec,
    pub webhooks: IntCounterVec,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// Await `f`, observing how long it took as the `stage` wait of a `lane` job
/// ([`Metrics::stage_wait`]).
pub async fn timed<F: std::future::Future>(stage: &str, lane: &str, f: F) -> F::Output {
    let t0 = std::time::Instant::now();
    let out = f.await;
    METRICS
        .stage_wait
        .with_label_values(&[stage, lane])
        .observe(t0.elapsed().as_secs_f64());
    out
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let m = Metrics {
        emails: counter_vec(
            &r,
            "mailfleet_emails_total",
            "Emails whose attempt was recorded, by lane, provider and outcome.",
            &["lane", "provider", "outcome"],
        ),
        enqueued: counter_vec(
            &r,
            "mailfleet_enqueued_total",
            "Jobs enqueued by this process, by lane and whether the idempotency key was new.",
            &["lane", "result"],
        ),
        dead_letters: counter_vec(
            &r,
            "mailfleet_dead_letters_total",
            "Entries moved to the dead-letter stream, by reason.",
            &["reason"],
        ),
        provider_duration: histogram_vec(
            &r,
            "mailfleet_provider_request_duration_seconds",
            "Provider request duration.",
            &["provider"],
            LATENCY_BUCKETS.to_vec(),
        ),
        provider_batch_size: histogram_vec(
            &r,
            "mailfleet_provider_batch_size",
            "Messages per batch request to a provider.",
            &["provider"],
            vec![1.0, 2.0, 8.0, 32.0, 128.0, 512.0, 1000.0],
        ),
        stage_wait: histogram_vec(
            &r,
            "mailfleet_stage_wait_seconds",
            "Time a job waited at one stage (admission, send_slot, provider_slot, limiter), by lane.",
            &["stage", "lane"],
            LATENCY_BUCKETS.to_vec(),
        ),
        end_to_end: histogram_vec(
            &r,
            "mailfleet_end_to_end_latency_seconds",
            "Time from enqueue to recorded outcome.",
            &["lane"],
            LATENCY_BUCKETS.to_vec(),
        ),
        record_batch: {
            let h = Histogram::with_opts(
                HistogramOpts::new(
                    "mailfleet_record_batch_size",
                    "Outcomes per Postgres record statement.",
                )
                .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
            )
            .expect("static metric definition");
            r.register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        },
        stale_outcomes: counter(
            &r,
            "mailfleet_stale_outcomes_total",
            "Outcomes rejected because the job's claim moved to another attempt.",
        ),
        ambiguous: counter_vec(
            &r,
            "mailfleet_ambiguous_total",
            "Attempts whose outcome cannot be known and that are sent again, so may duplicate: \
             expired_claim (a worker stopped after claiming), no_response (the request left, no \
             answer came back), server_error (a 5xx other than 503, which a gateway may answer \
             after the provider took the email).",
            &["reason"],
        ),
        already_final: counter(
            &r,
            "mailfleet_already_final_total",
            "Entries acked without sending because Postgres already had the job final.",
        ),
        duplicates_refused: counter(
            &r,
            "mailfleet_duplicates_refused_total",
            "Jobs recorded `duplicate` and not sent: another job held their idempotency key \
             within the dedup window (the Redis marker was lost).",
        ),
        promoted: counter(
            &r,
            "mailfleet_promoted_total",
            "Delayed entries promoted back to their lanes.",
        ),
        reclaimed: counter(
            &r,
            "mailfleet_reclaimed_total",
            "Entries taken over from a consumer idle past the visibility timeout.",
        ),
        stream_trimmed: counter(
            &r,
            "mailfleet_stream_trimmed_total",
            "Acked entries the leader trimmed from the lane streams.",
        ),
        reenqueued: counter(
            &r,
            "mailfleet_reenqueued_total",
            "Jobs the reconciler put back on their stream because their row stayed non-final long past due.",
        ),
        in_flight: {
            let g = IntGauge::new(
                "mailfleet_in_flight",
                "Entries read and not yet acked by this worker.",
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        in_flight_limit: gauge_vec(
            &r,
            "mailfleet_in_flight_limit",
            "How many entries of the lane this worker may hold read and not yet finished (bulk's adapts).",
            &["lane"],
        ),
        store_errors: counter_vec(
            &r,
            "mailfleet_store_errors_total",
            "Failed Postgres operations, by operation.",
            &["op"],
        ),
        redis_errors: counter_vec(
            &r,
            "mailfleet_redis_errors_total",
            "Failed Redis operations, by operation.",
            &["op"],
        ),
        build_info: {
            let g = IntGaugeVec::new(
                Opts::new("mailfleet_build_info", "Build information."),
                &["version"],
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        is_leader: gauge(
            &r,
            "mailfleet_scheduler_leader",
            "1 while this process holds the scheduler lease and may act on it, else 0.",
        ),
        fence_token: gauge(
            &r,
            "mailfleet_scheduler_fence_token",
            "The fencing token of this process's current (or last) scheduler lease.",
        ),
        lease_renew_failures: counter(
            &r,
            "mailfleet_lease_renew_failures_total",
            "Lease renewals that failed (Redis error, or another owner holds the lease); each one \
             makes this process step down.",
        ),
        fenced_rejected: counter(
            &r,
            "mailfleet_fenced_writes_rejected_total",
            "Leader transactions rolled back because a newer leader's token is in the fence: the \
             writes of a stale leader, prevented.",
        ),
        tick_lag: {
            let h = Histogram::with_opts(
                HistogramOpts::new(
                    "mailfleet_schedule_tick_lag_seconds",
                    "Fire time minus due time of each scheduled tick the leader fired.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ]),
            )
            .expect("static metric definition");
            r.register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        },
        schedules_due: gauge(
            &r,
            "mailfleet_schedules_due",
            "Schedules whose next tick is due and not yet fired, as the leader last counted \
             them (0 on other workers): the leader's backlog.",
        ),
        ticks: counter_vec(
            &r,
            "mailfleet_schedule_ticks_total",
            "Scheduled ticks handled, by result: fired, skipped (missed while no leader ran, \
             catch-up `skip`), stale (past `stale_after`).",
            &["result"],
        ),
        fanout_members: counter(
            &r,
            "mailfleet_fanout_members_total",
            "Audience members whose job a fan-out committed (each member once per tick).",
        ),
        fanout_remaining: gauge(
            &r,
            "mailfleet_fanout_remaining",
            "Members still to enqueue in the fan-outs this leader is running.",
        ),
        fanout_invalid: counter(
            &r,
            "mailfleet_fanout_invalid_total",
            "Audience members left out of a fan-out because their job would not validate.",
        ),
        ratelimit_calls: counter_vec(
            &r,
            "mailfleet_ratelimit_calls_total",
            "Calls to the cluster-wide rate limiter (lua/ratelimit.lua), by provider; each \
             serves every send of this worker waiting for that provider.",
            &["provider"],
        ),
        ratelimit_given_back: counter_vec(
            &r,
            "mailfleet_ratelimit_permits_given_back_total",
            "Rate-limit permits a worker could not use while fresh (its sends were held up \
             longer than 30% of the margin) and gave back to the cluster's window unused.",
            &["provider"],
        ),
        ratelimit_wait: {
            let c = prometheus::CounterVec::new(
                Opts::new(
                    "mailfleet_ratelimit_wait_seconds_total",
                    "Time sends spent waiting for a rate-limit permit, by provider.",
                ),
                &["provider"],
            )
            .expect("static metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        },
        provider_backoffs: counter_vec(
            &r,
            "mailfleet_provider_backoffs_total",
            "429 answers that made the whole cluster back off from a provider.",
            &["provider"],
        ),
        provider_errors: counter_vec(
            &r,
            "mailfleet_provider_errors_total",
            "Failed provider requests, by provider and class (transient, permanent, quota_auth, \
             ambiguous). quota_auth means the account cannot send: alert on it.",
            &["provider", "class"],
        ),
        breaker_state: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "mailfleet_provider_breaker_state",
                    "This worker's circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
                ),
                &["provider"],
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        batch_resends: counter_vec(
            &r,
            "mailfleet_provider_batch_resends_total",
            "Sends that went again because their batch request was refused for another email.",
            &["provider"],
        ),
        failovers: counter_vec(
            &r,
            "mailfleet_provider_failovers_total",
            "Sends moved to the next provider of their route because one did not take them.",
            &["from", "to"],
        ),
        deferred: counter(
            &r,
            "mailfleet_deferred_total",
            "Jobs put back without using an attempt because every provider of their route had \
             its breaker open.",
        ),
        queue_length: gauge_vec(
            &r,
            "mailfleet_queue_length",
            "Entries in the lane's streams (every partition), acked ones included until trimmed.",
            &["lane"],
        ),
        queue_pending: gauge_vec(
            &r,
            "mailfleet_queue_pending",
            "Entries read by a worker and not yet acked, per lane.",
            &["lane"],
        ),
        queue_lag: gauge_vec(
            &r,
            "mailfleet_queue_lag",
            "Entries in the lane not yet read by the consumer group (the backlog).",
            &["lane"],
        ),
        oldest_pending: {
            let g = prometheus::GaugeVec::new(
                Opts::new(
                    "mailfleet_queue_oldest_pending_age_seconds",
                    "Age (since enqueue) of the oldest entry read and not yet acked, per lane.",
                ),
                &["lane"],
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        delayed: gauge(
            &r,
            "mailfleet_delayed_size",
            "Entries waiting in the delayed sets (retries and future send_at).",
        ),
        dead_letter_length: gauge(
            &r,
            "mailfleet_dead_letter_length",
            "Entries in the dead-letter streams.",
        ),
        workers_alive: gauge(
            &r,
            "mailfleet_workers_alive",
            "Workers that reported in within the last 30 s (cluster-wide, as this process sees it).",
        ),
        tenants_active: gauge(
            &r,
            "mailfleet_bulk_tenants_active",
            "Tenants with bulk waiting or in flight on their own streams (once per partition), cluster-wide.",
        ),
        redis_memory_ratio: {
            let g = prometheus::Gauge::new(
                "mailfleet_redis_memory_ratio",
                "Redis used_memory / maxmemory, as read by this worker's observer (0 when Redis has no maxmemory). At 1 Redis refuses enqueues (noeviction); every worker trims acked entries from 0.8.",
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        fair_spread: {
            let g = prometheus::Gauge::new(
                "mailfleet_bulk_fair_spread",
                "Largest gap in emails served per unit of weight between tenants with bulk waiting (one partition's ring); a quantum or two is normal, growth means a tenant is starved.",
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        suppressed: counter(
            &r,
            "mailfleet_suppressed_recipients_total",
            "Recipients dropped before a send because they are on the suppression list.",
        ),
        paused: gauge_vec(
            &r,
            "mailfleet_paused",
            "1 for each pause in force (mailfleet pause), by scope (lane, provider, tenant) and name.",
            &["scope", "name"],
        ),
        webhooks: counter_vec(
            &r,
            "mailfleet_webhook_events_total",
            "Provider webhook results: events applied (new), and requests refused (forged, stale, replayed).",
            &["provider", "result"],
        ),
        registry: r,
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    #[cfg(target_os = "linux")]
    {
        let _ = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    m
});

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = enc.encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
