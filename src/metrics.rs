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
    pub end_to_end: HistogramVec,
    pub record_batch: Histogram,
    pub stale_outcomes: IntCounter,
    pub ambiguous: IntCounterVec,
    pub already_final: IntCounter,
    pub promoted: IntCounter,
    pub reclaimed: IntCounter,
    pub reenqueued: IntCounter,
    pub in_flight: IntGauge,
    pub store_errors: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
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
             answer came back).",
            &["reason"],
        ),
        already_final: counter(
            &r,
            "mailfleet_already_final_total",
            "Entries acked without sending because Postgres already had the job final.",
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
