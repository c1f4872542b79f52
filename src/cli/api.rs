use crate::api::{self, ingest};
use crate::config::{Global, Secret};
use crate::{shutdown, store};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Listen address.
    #[arg(long, env = "MAILFLEET_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Accepted bearer API keys, comma-separated. Requests without one get 401.
    #[arg(
        long,
        env = "MAILFLEET_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub api_keys: Vec<Secret>,
    /// SendGrid's Event Webhook verification key (base64 DER); enables /v1/webhooks/sendgrid.
    #[arg(long, env = "MAILFLEET_WEBHOOK_SENDGRID_PUBLIC_KEY")]
    pub webhook_sendgrid_public_key: Option<String>,
    /// Mailgun's webhook signing key; enables /v1/webhooks/mailgun.
    #[arg(
        long,
        env = "MAILFLEET_WEBHOOK_MAILGUN_SIGNING_KEY",
        hide_env_values = true
    )]
    pub webhook_mailgun_signing_key: Option<Secret>,
    /// Basic-auth user and password Postmark's webhook is configured with; enable
    /// /v1/webhooks/postmark.
    #[arg(long, env = "MAILFLEET_WEBHOOK_POSTMARK_USER")]
    pub webhook_postmark_user: Option<String>,
    #[arg(
        long,
        env = "MAILFLEET_WEBHOOK_POSTMARK_PASSWORD",
        hide_env_values = true
    )]
    pub webhook_postmark_password: Option<Secret>,
    /// Secret that signs unsubscribe links (the workers' MAILFLEET_UNSUBSCRIBE_SECRET);
    /// enables /v1/unsubscribe/{token}.
    #[arg(long, env = "MAILFLEET_UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<Secret>,
    /// Largest accepted age (or clock skew) of a signed webhook's timestamp, in seconds.
    #[arg(long, env = "MAILFLEET_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub webhook_tolerance_secs: i64,
}

pub async fn run(g: Global, a: ApiArgs) -> anyhow::Result<()> {
    let pg = store::connect(g.database_url.expose(), 8).await?;
    store::ensure_migrated(&pg).await?;
    let producer = super::producer(&g)?;
    let redis = super::redis_pool(&g)?;
    let state = ingest::ApiState::new(producer, pg.clone(), &a.api_keys, g.max_payload_bytes);
    let draining = Arc::new(AtomicBool::new(false));
    let hooks = api::webhooks::WebhookKeys {
        sendgrid_public_key: a.webhook_sendgrid_public_key.clone(),
        mailgun_signing_key: a.webhook_mailgun_signing_key.clone(),
        postmark_user: a.webhook_postmark_user.clone(),
        postmark_password: a.webhook_postmark_password.clone(),
        tolerance_secs: a.webhook_tolerance_secs,
    };
    let mut router = ingest::router(state).merge(api::webhooks::router(pg.clone(), hooks));
    if let Some(secret) = a.unsubscribe_secret.clone().filter(|s| !s.is_empty()) {
        router = router.merge(api::unsubscribe::router(pg.clone(), secret));
    }
    let router = router.merge(api::ops_router(api::Health {
        redis,
        pg,
        draining: draining.clone(),
    }));
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding the API address {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    println!("api listening on http://{addr}");
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    api::serve(listener, router, token).await?;
    Ok(())
}
