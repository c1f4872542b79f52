use crate::api::{self, ingest};
use crate::config::{ApiArgs, Global};
use crate::{shutdown, store};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn ses_hook(a: &ApiArgs) -> anyhow::Result<Option<Arc<api::webhooks::SesHook>>> {
    let topics: Vec<String> = a
        .webhook_ses_topic_arns
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if topics.is_empty() {
        return Ok(None);
    }
    let rule = api::webhooks::sns::UrlRule {
        prefixes: a
            .webhook_sns_url_prefixes
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
    };
    Ok(Some(Arc::new(api::webhooks::SesHook {
        topic_arns: topics,
        verifier: api::webhooks::sns::SnsVerifier::new(rule)?,
    })))
}

pub async fn run(g: Global, a: ApiArgs) -> anyhow::Result<()> {
    let pg = store::connect(g.database_url.expose(), 8).await?;
    store::ensure_migrated(&pg).await?;
    let mut producer = super::producer(&g)?;
    if producer.durability() == crate::producer::Durability::Ledger {
        // The ledger's rows go through the API's own pool, not a second one.
        producer = producer.with_ledger(pg.clone());
    }
    let redis = super::redis_pool(&g)?;
    let state = ingest::ApiState::new(producer, pg.clone(), &a.api_keys, g.max_payload_bytes);
    let draining = Arc::new(AtomicBool::new(false));
    let hooks = api::webhooks::WebhookKeys {
        sendgrid_public_key: a.webhook_sendgrid_public_key.clone(),
        mailgun_signing_key: a.webhook_mailgun_signing_key.clone(),
        postmark_user: a.webhook_postmark_user.clone(),
        postmark_password: a.webhook_postmark_password.clone(),
        ses: ses_hook(&a)?,
        tolerance_secs: a.webhook_tolerance_secs,
    };
    let mut router = api::v1::router(state).merge(api::webhooks::router(pg.clone(), hooks));
    if let Some(token) = a.admin_token.clone().filter(|t| !t.is_empty()) {
        if token.expose().len() < 16 {
            anyhow::bail!("MAILFLEET_ADMIN_TOKEN must be at least 16 characters");
        }
        router = router.merge(api::admin::router(api::admin::AdminState {
            pg: pg.clone(),
            redis: redis.clone(),
            keys: crate::stream::Keys::new(&g.prefix, g.partitions),
            token,
            secure_cookie: !a.admin_insecure_cookie,
        }));
    }
    if let Some(secret) = a.unsubscribe_secret.clone().filter(|s| !s.is_empty()) {
        crate::unsubscribe::check_secret(&secret).map_err(anyhow::Error::msg)?;
        router = router.merge(api::unsubscribe::router(pg.clone(), secret));
    }
    let router = router.merge(api::health_router(api::Health {
        redis,
        pg,
        draining: draining.clone(),
    }));
    let bounds = api::serve::Bounds {
        max_connections: a.max_connections.max(1),
        header_timeout: Duration::from_millis(a.header_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(a.request_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(a.idle_timeout_ms.max(1)),
    };
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding the API address {}", a.listen))?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    // `/metrics` on its own listener, so the public port serves no unauthenticated figures.
    let metrics = if a.metrics_listen.is_empty() {
        None
    } else {
        let l = tokio::net::TcpListener::bind(&a.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding the API's metrics address {} (MAILFLEET_API_METRICS_LISTEN; empty turns it off)",
                    a.metrics_listen
                )
            })?;
        let maddr = l.local_addr()?;
        tracing::info!(addr = %maddr, "api metrics listening");
        println!("api metrics on http://{maddr}/metrics");
        Some(tokio::spawn(api::serve(
            l,
            api::metrics_router(),
            api::serve::Bounds::default(),
            token.clone(),
        )))
    };
    tracing::info!(%addr, "api listening");
    println!("api listening on http://{addr}");
    shutdown::cancel_on_signal(token.clone());
    api::serve(listener, router, bounds, token).await?;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(())
}
