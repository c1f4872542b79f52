use crate::config::{Global, SchedulerRole, WorkerArgs};
use crate::lease::{self, LeaseKeys};
use crate::provider::{Providers, http_client};
use crate::render::Limits;
use crate::worker::{self, Deps, Settings};
use crate::{api, config, scheduler, shutdown, store, stream};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

pub async fn run(g: Global, a: WorkerArgs) -> anyhow::Result<()> {
    let send_config = config::send_config(g.config.as_deref(), &a.provider)?;
    // One HTTP client per lane: tx's connections are opened and driven by the tx runtime.
    let client = http_client(a.send_concurrency)?;
    let tx_client = http_client(a.tx_send_concurrency)?;
    let pg = store::connect(g.database_url.expose(), a.pg_pool).await?;
    // Every partition's reader keeps one connection (a checkout costs a round trip); the rest
    // serve the recorder, reclaimer, heartbeat, limiter and leader.
    let redis = stream::pool(
        &g.redis_target(),
        Duration::from_millis(g.redis_timeout_ms),
        usize::from(g.partitions) + 16,
    )?;
    let settings = Settings {
        consumer: a.consumer.clone().unwrap_or_else(default_consumer),
        batch_size: a.batch_size.max(1),
        max_in_flight: a.max_in_flight,
        adaptive_in_flight: !a.fixed_in_flight,
        tx_in_flight: a.tx_in_flight,
        send_concurrency: a.send_concurrency,
        tx_send_concurrency: a.tx_send_concurrency,
        tx_pg_pool: a.tx_pg_pool,
        redis_timeout: Duration::from_millis(g.redis_timeout_ms),
        record_batch: a.record_batch,
        block_ms: a.block_ms,
        visibility_timeout_ms: a.visibility_timeout_ms,
        reclaim_interval_ms: a.reclaim_interval_ms,
        max_deliveries: a.max_deliveries.max(1),
        max_attempts: a.max_attempts.max(1),
        retry_base_ms: a.retry_base_ms,
        retry_max_ms: a.retry_max_ms,
        dedup_window: Duration::from_secs(g.dedup_ttl_secs.max(1)),
        max_retry_after: Duration::from_secs(a.max_retry_after_secs.max(1)),
        permit_wait_max: Duration::from_millis(a.permit_wait_max_ms.max(1)),
        promote_interval_ms: a.promote_interval_ms,
        read_linger_ms: a.read_linger_ms,
        drain_timeout: Duration::from_secs(a.drain_timeout_secs),
        max_payload: g.max_payload_bytes,
        render: Limits {
            fuel: a.render_fuel,
            recursion: 64,
            max_output_bytes: a.render_max_bytes,
        },
        ambiguous: a.ambiguous,
        reconcile_after: Duration::from_secs(a.reconcile_after_secs),
        reconcile_interval_ms: a.reconcile_interval_ms,
        unsubscribe: match (&a.unsubscribe_url, &a.unsubscribe_secret) {
            (Some(url), Some(secret)) if !secret.is_empty() => {
                crate::unsubscribe::check_secret(secret).map_err(anyhow::Error::msg)?;
                Some(crate::unsubscribe::Links {
                    base_url: url.clone(),
                    secret: secret.clone(),
                    ttl_secs: a.unsubscribe_ttl_days.max(1) * 86_400,
                })
            }
            (None, None) => None,
            _ => anyhow::bail!(
                "set both MAILFLEET_UNSUBSCRIBE_URL and MAILFLEET_UNSUBSCRIBE_SECRET, or neither"
            ),
        },
        tenant_weights: a.tenant_weights.0.clone(),
    };
    announce(&send_config, &settings, g.partitions);
    // Bound before anything starts, so a taken port stops the worker before it reads a job.
    let listener = if a.listen.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&a.listen)
                .await
                .with_context(|| {
                    format!(
                        "binding the worker's metrics address {} (another worker on this host? \
                         give each its own MAILFLEET_WORKER_LISTEN, e.g. 0.0.0.0:9465, or \
                         127.0.0.1:0 for a free port, which is logged)",
                        a.listen
                    )
                })?,
        )
    };
    let deps = Deps {
        redis_url: g.redis_target(),
        redis: redis.clone(),
        pg: pg.clone(),
        keys: stream::Keys::new(&g.prefix, g.partitions),
        providers: Arc::new(Providers::from_config(&send_config, &client, &tx_client)?),
    };
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let scheduler = if a.scheduler == SchedulerRole::Off {
        None
    } else {
        store::ensure_migrated(&pg).await?;
        let mut s = scheduler::Settings::new(format!(
            "{}/{}",
            settings.consumer,
            uuid::Uuid::now_v7().simple()
        ));
        s.lease_ttl = Duration::from_millis(a.lease_ttl_ms.max(100));
        s.grace = Duration::from_secs(a.scheduler_grace_secs);
        s.fanout_batch = a.fanout_batch.max(1);
        s.trim_every = Duration::from_secs(a.trim_interval_secs);
        let deps = scheduler::Deps {
            pg: pg.clone(),
            redis: redis.clone(),
            // A fan-out writes its jobs' rows in its own fenced transaction, then pushes them.
            producer: crate::cli::producer(&g)?.redis_only(),
            lease_keys: LeaseKeys::new(&g.prefix, lease::SCHEDULER),
        };
        Some(scheduler::start(s, deps, token.clone()))
    };
    let running = if a.scheduler == SchedulerRole::Only {
        None
    } else {
        Some(worker::start(settings, deps, token.clone()).await?)
    };
    let draining = running
        .as_ref()
        .map(|r| r.draining.clone())
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    let server = if let Some(listener) = listener {
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
        let router = api::ops_router(api::Health {
            redis,
            pg,
            draining: draining.clone(),
        });
        Some(tokio::spawn(api::serve(
            listener,
            router,
            api::serve::Bounds::default(),
            token.clone(),
        )))
    } else {
        None
    };
    if let Some(r) = running {
        r.join().await;
    } else {
        token.cancelled().await;
        draining.store(true, Ordering::SeqCst);
    }
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    Ok(())
}

/// Where a provider sends: its base URL without credentials, or an SMTP relay's host and port.
fn endpoint(p: &config::ProviderConfig) -> String {
    if p.kind == config::ProviderKind::Smtp {
        return format!(
            "smtp://{}:{}",
            p.host.as_deref().unwrap_or("?"),
            p.port
                .map_or_else(|| "default".to_owned(), |x| x.to_string())
        );
    }
    match reqwest::Url::parse(&p.base_url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Say at start what this worker will do: every provider with its endpoint and limits, the
/// routes' order, the lanes' pools. Never a secret.
fn announce(send: &config::SendConfig, s: &Settings, partitions: u16) {
    for p in &send.providers {
        tracing::info!(
            provider = %p.name,
            kind = ?p.kind,
            endpoint = %endpoint(p),
            limit = p.limit.map(|l| format!("{}/{} ms", l.limit, l.window_ms)),
            tenant_limit = p.limit.and_then(|l| l.tenant_limit),
            concurrency = p.concurrency,
            rate_per_sec = p.rate_per_sec,
            "provider configured"
        );
    }
    tracing::info!(
        partitions,
        tx_in_flight = s.tx_in_flight,
        bulk_in_flight = s.max_in_flight,
        bulk_in_flight_adapts = s.adaptive_in_flight,
        tx_send_slots = s.tx_send_concurrency,
        bulk_send_slots = s.send_concurrency,
        batch_size = s.batch_size,
        visibility_timeout_ms = s.visibility_timeout_ms,
        max_attempts = s.max_attempts,
        "worker settings"
    );
}
